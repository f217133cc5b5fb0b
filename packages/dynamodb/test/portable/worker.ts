import { runSuite } from './suite.ts'

export default {
  async fetch(request: Request): Promise<Response> {
    const params = new URL(request.url).searchParams
    const endpoint = params.get('endpoint')
    const table = params.get('table')
    if (!endpoint || !table) return new Response('missing ?endpoint= or ?table=', { status: 400 })
    return Response.json(await runSuite(endpoint, table, 'workerd'))
  },
}
