import { runSuite } from './suite.ts'

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url).searchParams.get('etcd')
    if (!url) return new Response('missing ?etcd=', { status: 400 })
    return Response.json(await runSuite(url, 'workerd'))
  },
}
