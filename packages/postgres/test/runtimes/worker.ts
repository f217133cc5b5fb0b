// describeStore against PostgreSQL from workerd: the driver's Workers build (TCP through
// `cloudflare:sockets`), bundled by the test; POST { url, seed } runs the contract and answers
// its results as JSON.
import { contract } from './contract.ts'

export default {
  async fetch(request: Request): Promise<Response> {
    const { url, seed } = (await request.json()) as { url: string; seed: string }
    return Response.json(await contract(url, seed))
  },
}
