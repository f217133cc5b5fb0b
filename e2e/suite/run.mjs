import { createHarness } from '@kms-proxy/testkit'
import { conformance, consume, produce } from './conformance.mjs'

/**
 * One call per runtime and phase. input: { runtime, suite?, env?, produce?, consume? }.
 * Returns plain JSON, so every runtime can hand it back the same way.
 */
export async function runSuite(lib, input) {
  const out = { runtime: input.runtime }
  if (input.suite) {
    const h = createHarness()
    conformance(h, lib, input.env)
    out.results = await h.run()
  }
  if (input.produce) out.produced = await produce(lib, input.runtime)
  if (input.consume) out.consumed = await consume(lib, input.consume)
  return out
}
