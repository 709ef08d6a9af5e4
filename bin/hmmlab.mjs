#!/usr/bin/env node
// The hmmlab command. Runs the TypeScript sources directly through tsx's ESM loader, so that
// `npx hmmlab` works right after `npm ci` with no build step.
import { register } from 'tsx/esm/api';

process.env.XDG_RUNTIME_DIR ??= '/tmp'; // quiets Mesa's "XDG_RUNTIME_DIR is invalid"
register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv);
