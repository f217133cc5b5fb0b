// Entry for Cloudflare workerd (bundled by esbuild, run by Miniflare): POST the input, get the output.
import * as core from '@kms-proxy/core'
import * as passphrase from '@kms-proxy/passphrase'
import { runSuite } from '../suite/run.mjs'

export default {
  async fetch(request) {
    const input = await request.json()
    return Response.json(await runSuite({ core, passphrase }, input))
  },
}
