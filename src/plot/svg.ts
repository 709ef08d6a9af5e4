/**
 * Render a vega-lite spec to SVG in Node, without a browser: vega-lite compiles the spec to vega,
 * and a headless vega View (renderer "none") serializes its scenegraph as SVG.
 */
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { errorMessage, HmmlabError } from '../errors.ts';

export async function renderSvg(spec: TopLevelSpec | Record<string, unknown>): Promise<string> {
  let view: View | undefined;
  try {
    const compiled = compile(spec as TopLevelSpec).spec;
    view = new View(parse(compiled), { renderer: 'none' });
    return await view.toSVG();
  } catch (e) {
    throw new HmmlabError('EINVAL', `cannot render the chart: ${errorMessage(e)}`, { cause: e });
  } finally {
    view?.finalize();
  }
}
