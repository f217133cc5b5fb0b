/**
 * Starts etcd 3.4 (Debian's /usr/bin/etcd) on free loopback ports with temporary data dirs, and
 * stops it again: every process killed, every directory removed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../../testkit/test/free-port.ts'

export const ETCD = '/usr/bin/etcd'
export const haveEtcd = existsSync(ETCD)

export interface Member {
  name: string
  url: string
  peer: string
  dir: string
  proc?: ChildProcess
  log: string[]
}

export interface EtcdCluster {
  urls: string[]
  members: Member[]
  /** SIGKILL one member (its data dir stays until stop()). */
  kill(i: number): Promise<void>
  stop(): Promise<void>
}

async function healthy(url: string, deadline: number): Promise<void> {
  for (;;) {
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
      const body = (await r.json()) as { health?: string }
      if (r.ok && body.health === 'true') return
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`etcd at ${url} did not become healthy`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const live = new Set<ChildProcess>()
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL')
})

export async function startEtcd(options: { members?: number; args?: string[] } = {}): Promise<EtcdCluster> {
  const n = options.members ?? 1
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir()
  const members: Member[] = []
  for (let i = 0; i < n; i++) {
    const [client, peer] = [await freePort(), await freePort()]
    members.push({
      name: `n${i + 1}`,
      url: `http://127.0.0.1:${client}`,
      peer: `http://127.0.0.1:${peer}`,
      dir: mkdtempSync(join(base, 'kms-proxy-etcd-')),
      log: [],
    })
  }
  const initialCluster = members.map((m) => `${m.name}=${m.peer}`).join(',')
  const token = `kp-${Math.random().toString(36).slice(2)}`
  const cluster: EtcdCluster = {
    urls: members.map((m) => m.url),
    members,
    async kill(i) {
      const p = members[i]!.proc
      if (!p || p.exitCode !== null || p.signalCode !== null) return
      const exited = new Promise((r) => p.once('exit', r))
      p.kill('SIGKILL')
      await exited
      live.delete(p)
    },
    async stop() {
      await Promise.all(members.map((_, i) => cluster.kill(i)))
      for (const m of members) rmSync(m.dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
    },
  }
  for (const m of members) {
    const args = [
      '--name', m.name,
      '--data-dir', m.dir,
      '--logger=zap',
      '--log-level=error',
      '--listen-client-urls', m.url,
      '--advertise-client-urls', m.url,
      '--listen-peer-urls', m.peer,
      '--initial-advertise-peer-urls', m.peer,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', token,
      '--initial-cluster-state', 'new',
      ...(options.args ?? []),
    ]
    const p = spawn(ETCD, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    live.add(p)
    p.stderr!.on('data', (d: Buffer) => {
      if (m.log.length < 200) m.log.push(d.toString())
    })
    m.proc = p
  }
  try {
    await Promise.all(members.map((m) => healthy(m.url, Date.now() + 20_000)))
  } catch (error) {
    const logs = members.map((m) => `${m.name}: ${m.log.join('').slice(-2000)}`).join('\n')
    await cluster.stop()
    throw new Error(`${(error as Error).message}\n${logs}`)
  }
  return cluster
}

/** A raw gateway POST (tests only). */
export async function gateway(url: string, path: string, body: unknown, token?: string): Promise<any> {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (token) headers.authorization = token
  const r = await fetch(`${url}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
  const json = await r.json()
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}: ${JSON.stringify(json)}`)
  return json
}

/**
 * Turns auth on: user `root` (role root), and a least-privilege user `app` whose role `kms` reads
 * and writes under `app/` only. Returns a function that runs a gateway call as root.
 */
export async function enableAuth(url: string, passwords: { root: string; app: string }): Promise<(path: string, body: unknown) => Promise<any>> {
  await gateway(url, '/v3/auth/user/add', { name: 'root', password: passwords.root })
  await gateway(url, '/v3/auth/user/grant', { user: 'root', role: 'root' })
  await gateway(url, '/v3/auth/role/add', { name: 'kms' })
  await gateway(url, '/v3/auth/role/grant', { name: 'kms', perm: { permType: 'READWRITE', key: b64('app/'), range_end: b64('app0') } })
  await gateway(url, '/v3/auth/user/add', { name: 'app', password: passwords.app })
  await gateway(url, '/v3/auth/user/grant', { user: 'app', role: 'kms' })
  await gateway(url, '/v3/auth/enable', {})
  return async (path, body) => {
    const { token } = await gateway(url, '/v3/auth/authenticate', { name: 'root', password: passwords.root })
    return gateway(url, path, body, token)
  }
}

export const b64 = (s: string) => Buffer.from(s).toString('base64')
export const unb64 = (s: string) => Buffer.from(s, 'base64')
