import { runSuite, type Targets } from './suite.ts'

export default {
  async fetch(request: Request): Promise<Response> {
    return Response.json(await runSuite((await request.json()) as Targets))
  },
}
