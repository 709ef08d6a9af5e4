/**
 * comlink over worker_threads ports, shared by the owner and the workers. comlink's own handler for
 * thrown values keeps only an Error's message, name and stack; this one keeps an HmmlabError's code
 * and the pages it names (errorPages) too, so a worker's syscall or fault that fails with ENOSPC or EFAULT fails with that code on the
 * caller's side, as errno would. (Both sides install it by importing this module.)
 */
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/umd/node-adapter.js';
import { type Errno, errorPages, HmmlabError } from '../errors.ts';

export { Comlink };

/** A comlink endpoint on a worker, a worker's parentPort or a MessagePort. */
export const endpoint: typeof nodeEndpoint = nodeEndpoint;

interface WireError {
  isError: boolean;
  value: unknown;
}

const builtinThrow = Comlink.transferHandlers.get('throw')!;

Comlink.transferHandlers.set('throw', {
  // comlink wraps a thrown value as { value, [its throw marker]: 0 }; its marker is private, so
  // recognise the shape through the built-in handler, which stays in charge of that test.
  canHandle: (v: unknown): v is { value: unknown } => builtinThrow.canHandle(v),
  serialize({ value }: { value: unknown }): [WireError, []] {
    if (value instanceof Error) {
      const code = value instanceof HmmlabError ? value.code : undefined;
      // The pages ride along: the model needs them to tell what a failed mapwrite left (replay.ts).
      const pages = errorPages(value);
      return [
        {
          isError: true,
          value: { message: value.message, name: value.name, stack: value.stack, code, pages },
        },
        [],
      ];
    }
    return [{ isError: false, value }, []];
  },
  deserialize(w: WireError): never {
    if (!w.isError) throw w.value;
    const e = w.value as { message: string; name: string; stack?: string; code?: Errno; pages?: number[] };
    const err = e.code
      ? new HmmlabError(e.code, e.message, e.pages ? { pages: e.pages } : undefined)
      : new Error(e.message);
    if (!e.code) err.name = e.name;
    if (e.stack) err.stack = e.stack;
    throw err;
  },
} as Comlink.TransferHandler<unknown, WireError>);
