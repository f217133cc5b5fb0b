import { runSuite } from './suite.ts'

const url = new URL(location.href).searchParams.get('etcd')!
;(globalThis as { results?: Promise<unknown> }).results = runSuite(url, 'chromium').catch((e) => [{ name: 'page', ok: false, ms: 0, error: String(e) }])
