import { runSuite, type Targets } from './suite.ts'

const targets = JSON.parse(new URL(location.href).searchParams.get('targets')!) as Targets
;(globalThis as { results?: Promise<unknown> }).results = runSuite(targets).catch((e) => [{ name: 'page', ok: false, ms: 0, error: String(e) }])
