/**
 * The KMS v2 plugin server: gRPC on a Unix socket, backed by a kms-proxy key chain.
 *
 * kube-apiserver makes a 32-byte DEK seed at start and whenever Status reports a new key_id, and
 * asks Encrypt to protect it at once, throwing the answer away unless Encrypt's key_id equals
 * Status's; Decrypt runs on a cache miss (start, or data under another seed). So Encrypt and
 * Decrypt are rare and the chain makes them cost no root-key call in steady state. Status is
 * polled (every minute while healthy, every 10 s while not, its verdict cached 20 s / 3 s for
 * /healthz and /readyz): it reads the chain head (one store read, no root-key call), so a
 * rotation made by any process sharing the store shows at the next Status, reports the KEK the
 * next Encrypt will use (loading a new one first), rotates ahead of the KEK's age or usage limit so that Encrypt
 * never rotates between a Status and its Encrypt, and asks the root key at most once per
 * `healthCacheMs` (1 h), in the background.
 */
import * as grpc from '@grpc/grpc-js'
import { connect } from 'node:net'
import { chmod, chown, link, lstat, mkdtemp, readFile, rm, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { KeyChain, KmsProxyError, decodeHeader, kekAad, type KeyChainStats, type PrimaryStatus, type RootKey } from '@kms-proxy/core'
import {
  KMS_API_VERSION,
  MAX_PLAINTEXT_BYTES,
  SEED_ASSOCIATED_DATA,
  annotationsProblem,
  ciphertextProblem,
  joinEncryptedData,
  keyIdFor,
  keyIdProblem,
  parseKeyId,
  splitEncryptedData,
} from './envelope.js'
import { loadKmsService } from './proto.js'

/** Options of {@link serveKmsPlugin}. */
export interface KmsPluginOptions {
  /**
   * Unix socket path (`/run/kms/kms-proxy.sock` or `unix:///run/kms/kms-proxy.sock`), or a Linux
   * abstract socket (`unix:///@name` or `@name`, as kube-apiserver reads them), which needs
   * `allowAbstractSocket`.
   */
  socket: string
  /** The key chain that protects the seeds. Its root key is whatever it was opened with. */
  chain: KeyChain
  /**
   * How long a root-key probe's verdict is reused: the root key is asked at most once per this
   * long (24 times a day by default). Default 3,600,000 ms (1 h); 0 probes at every Status.
   *
   * @defaultValue 3,600,000 (1 h)
   */
  healthCacheMs?: number
  /**
   * The chain's root key, for the root-key probe (`newKek` with an AAD no KEK record can have; the
   * KEK made is dropped). Its verdict shows in `stats().health.rootKey` and `degraded`, never in
   * healthz: a plugin that can encrypt and decrypt from its loaded KEKs is healthy. Without it (and
   * without `roots` or `healthCheck`) the root key's state follows the chain's own root-key calls.
   */
  rootKey?: RootKey
  /**
   * The chain's roots by name, for a chain opened with `roots` (for example the HSM and a KMS key
   * while a cluster moves from one to the other): pass the same object. Each root is probed as
   * `rootKey` would be, concurrently, one call per root per `healthCacheMs`; each verdict shows in
   * `stats().health.roots`, and a root that fails marks the plugin degraded, never unhealthy (the
   * chain unlocks through any one root). Give `rootKey` or `roots`, not both.
   */
  roots?: Readonly<Record<string, RootKey>>
  /** A probe of your own instead of the root-key call: resolves when the root key is reachable. */
  healthCheck?: () => Promise<void>
  /**
   * A Status evaluation or a root-key probe that has not answered within this long counts as failed.
   *
   * @defaultValue 2,500 ms
   */
  healthTimeoutMs?: number
  /**
   * Mode of the socket file.
   *
   * @defaultValue 0o600 (kube-apiserver runs as root)
   */
  socketMode?: number
  /**
   * Group of the socket file, by gid or by name (looked up in /etc/group), for a kube-apiserver
   * that runs as a non-root user: with `socketMode: 0o660` its group may connect.
   *
   * @defaultValue the process's group
   */
  socketGroup?: number | string
  /**
   * Serve an abstract socket (`unix:///@name`). It has no file, so no mode and no group: any
   * process in the same network namespace can call Decrypt. Off, such an endpoint is refused at
   * start.
   *
   * @defaultValue false
   */
  allowAbstractSocket?: boolean
  /**
   * Largest gRPC request accepted; larger ones fail with RESOURCE_EXHAUSTED.
   *
   * @defaultValue 64 KiB (65,536)
   */
  maxRequestBytes?: number
  /** Called once per request, after the answer: for logs and metrics. Carries no secret. */
  onRequest?: (event: KmsPluginRequestEvent) => void
  /** Called when healthz or the degraded state changes (for a log line). Carries no secret. */
  onHealthChange?: (health: KmsPluginHealth) => void
}

/** What the plugin knows of its own health; `stats().health`. */
export interface KmsPluginHealth {
  /** Whether Status answers healthz "ok": the KEK the next Encrypt uses is loaded, within its age and with uses left. */
  ok: boolean
  /** What Status reports as healthz ("ok" or "unhealthy: <reason>"). */
  healthz: string
  /**
   * Why the plugin, while still able to serve, is not as it should be: the root key or the store
   * unreachable, a rotation due and failing. Undefined when nothing is wrong. Not sent to
   * kube-apiserver (any healthz but "ok" takes the node out of its load balancer).
   */
  degraded?: string
  /** When Status was last evaluated (ms since the epoch), 0 before the first. */
  checkedAt: number
  /**
   * When the chain last read its head (ms since the epoch; `KeyChain.stats().headCheckedAt`), 0
   * before the first read: every Status reads it, and so does an Encrypt or Decrypt once the
   * chain's `maxStalenessMs` has passed, or a push from the store. A rotation anywhere is seen at
   * the first read after it.
   */
  headCheckedAt: number
  /** Root-key probes run: each costs one root-key call when `rootKey` or `healthCheck` is given. */
  probes: number
  /** The last root-key probe (or, without one, the chain's last root-key call); with `roots`, every root's, failing if any failed. */
  rootKey: {
    /** Whether it answered; undefined before the first probe. */
    ok: boolean | undefined
    /** When the probe started (ms since the epoch), 0 before the first. */
    checkedAt: number
    /** Why it failed (kms-proxy error code and message; no secret). */
    error?: string
  }
  /** With `roots`: each root's last probe, by name. */
  roots?: Record<string, KmsPluginRootState>
  /**
   * Roots the chain has (active or being added, as its head lists them) that this plugin does not
   * hold, checked once per `healthCacheMs` (one store read): a new KEK is wrapped under every root
   * of the chain, so until the plugin is redeployed with them it cannot rotate, and it cannot
   * decrypt under a KEK it has not loaded whose only wraps are under them. Absent when there are none.
   */
  unheldRoots?: string[]
  /** The chain head's primary as the last evaluation read it (one store read, no root-key call). */
  primary?: {
    /** Its key_id. */
    keyId: string
    /** Milliseconds until its age limit (0: due). */
    ageLeftMs: number
    /** Uses left across every process sharing the store. */
    usesLeft: number
    /** Whether this process holds it unwrapped. */
    loaded: boolean
  }
}

/** One root's last probe: `stats().health.roots[name]`. */
export interface KmsPluginRootState {
  /** Whether it answered; undefined before the first probe. */
  ok: boolean | undefined
  /** When the probe started (ms since the epoch), 0 before the first. */
  checkedAt: number
  /** Why it failed (kms-proxy error code and message; no secret). */
  error?: string
}

/** One answered call, as `onRequest` receives it. */
export interface KmsPluginRequestEvent {
  /** The KMS v2 method called. */
  method: 'Status' | 'Encrypt' | 'Decrypt'
  /** kube-apiserver's request id (Encrypt, Decrypt), truncated to 128 characters. */
  uid?: string
  /** gRPC status code name: OK, INVALID_ARGUMENT, ... */
  code: string
  /** kms-proxy error code when one caused the failure (ERR_DECRYPT, ERR_ROOT_KEY, ...). */
  error?: string
  /** key_id answered (Status, Encrypt). */
  keyId?: string
  /** Time from the request to the answer, in milliseconds. */
  ms: number
}

/** What {@link KmsPlugin.stats} returns: counters since the start; no I/O. */
export interface KmsPluginStats {
  /** Calls received, by method. */
  requests: {
    /** Status calls (kube-apiserver's polls). */
    Status: number
    /** Encrypt calls (one per new seed). */
    Encrypt: number
    /** Decrypt calls (seeds kube-apiserver does not hold). */
    Decrypt: number
  }
  /** Failed requests by gRPC code name. */
  failures: Record<string, number>
  /** Health as Status last reported it, and what is degraded. */
  health: KmsPluginHealth
  /** key_id Status or Encrypt last answered, or of this process's primary KEK ("" before there is one). */
  keyId: string
  /** The key chain's own counters (`KeyChain.stats()`). */
  chain: KeyChainStats
}

/** A running plugin, as {@link serveKmsPlugin} resolves it. */
export interface KmsPlugin {
  /** The socket path the server listens on, or `@name` for an abstract socket. */
  readonly socket: string
  /** Counters, health and the chain's stats; no I/O. */
  stats(): KmsPluginStats
  /** Runs a root-key probe now (ignoring `healthCacheMs`), then evaluates Status; resolves to the healthz string. */
  checkHealth(): Promise<string>
  /**
   * Stops accepting calls, lets running calls finish (at most 5 s), removes the socket file, and
   * closes the chain (`chain.close()`: its store watch stops, so nothing of the plugin keeps the
   * process alive; the chain itself still works, reading its head every `maxStalenessMs`).
   */
  close(): Promise<void>
}

const { status: Code } = grpc
const codeName = (code: grpc.status): string => grpc.status[code] ?? String(code)

/** A gRPC error to send: code and a message with no secret in it. */
class Refusal extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly errorCode?: string,
  ) {
    super(message)
  }
}

/** How a kms-proxy failure is reported to kube-apiserver. */
export function grpcCodeFor(error: unknown): grpc.status {
  if (error instanceof Refusal) return error.code
  if (error instanceof KmsProxyError) {
    switch (error.code) {
      case 'ERR_FORMAT':
      case 'ERR_DECRYPT':
        return Code.INVALID_ARGUMENT
      case 'ERR_UNKNOWN_KEK':
        return Code.NOT_FOUND
      case 'ERR_ROOT_KEY':
        return error.retryable ? Code.UNAVAILABLE : Code.FAILED_PRECONDITION
      case 'ERR_STORE':
        return Code.UNAVAILABLE
      case 'ERR_LIMIT':
        return Code.FAILED_PRECONDITION
    }
  }
  if (error instanceof TypeError || error instanceof RangeError) return Code.INVALID_ARGUMENT
  return Code.INTERNAL
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g
/**
 * `text` with every unpaired surrogate replaced by U+FFFD: proto3 strings must be valid UTF-8,
 * and Go's decoder (kube-apiserver's) refuses the whole message otherwise.
 */
const wellFormed = (text: string): string => text.replace(LONE_SURROGATE, '\ufffd')

/** The message sent with a failure: kms-proxy messages are secret-free by contract; others are not shown. */
function messageFor(error: unknown): string {
  if (error instanceof Refusal) return wellFormed(error.message)
  if (error instanceof KmsProxyError) return wellFormed(`${error.code}: ${error.message}`)
  return 'internal error'
}

/** Where to listen: a socket file, or a name in Linux's abstract namespace. */
export type Endpoint = { kind: 'file'; path: string } | { kind: 'abstract'; name: string }

/** Sockets of a sockaddr_un: 108 bytes with the terminating (or, abstract, leading) NUL. */
const MAX_ABSTRACT_NAME_BYTES = 107

/** `socket` as kube-apiserver reads an endpoint; an abstract one only if `allowAbstract`. */
export function parseEndpoint(socket: unknown, allowAbstract: boolean): Endpoint {
  if (typeof socket !== 'string' || socket.length === 0) throw new TypeError('socket: expected a Unix socket path')
  const path = socket.startsWith('unix://') ? socket.slice('unix://'.length) : socket
  // kube-apiserver (k8s.io/kms/pkg/util/util.go) dials unix:///@name as the abstract socket "name".
  const name = path.startsWith('/@') ? path.slice(2) : path.startsWith('@') ? path.slice(1) : undefined
  if (name === undefined) {
    if (!path.startsWith('/')) throw new TypeError('socket: expected an absolute path (or unix:///absolute/path)')
    return { kind: 'file', path }
  }
  if (name.length === 0 || name.includes('\0') || Buffer.byteLength(name) > MAX_ABSTRACT_NAME_BYTES) {
    throw new TypeError(`socket: an abstract socket name must be 1 to ${MAX_ABSTRACT_NAME_BYTES} bytes without NUL`)
  }
  if (!allowAbstract) {
    throw new TypeError(
      `socket: ${socket} is a Linux abstract socket, which has no file permissions: any process in this network namespace could call Decrypt. ` +
        'Use a socket file, or pass allowAbstractSocket: true (CLI: --allow-abstract-socket) to serve it anyway',
    )
  }
  if (process.platform !== 'linux') throw new TypeError(`socket: abstract sockets exist only on Linux, not on ${process.platform}`)
  return { kind: 'abstract', name }
}

/** The grpc-js address of an endpoint: Node reads a leading NUL as the abstract namespace, as Go reads "@". */
export const grpcAddress = (endpoint: Endpoint): string => (endpoint.kind === 'file' ? `unix:${endpoint.path}` : `unix:\0${endpoint.name}`)

/** A gid from a number or a group name in /etc/group (groups from NSS modules: pass the number). */
async function groupId(group: number | string): Promise<number> {
  const MAX_ID = 2 ** 32 - 2
  if (typeof group === 'number') {
    if (!Number.isInteger(group) || group < 0 || group > MAX_ID) throw new RangeError(`socketGroup: expected a gid from 0 to ${MAX_ID}`)
    return group
  }
  if (typeof group !== 'string' || group.length === 0) throw new TypeError('socketGroup: expected a gid or a group name')
  if (/^[0-9]+$/.test(group)) return groupId(Number(group))
  const lines = (await readFile('/etc/group', 'utf8').catch(() => '')).split('\n')
  for (const line of lines) {
    const [name, , gid] = line.split(':')
    if (name === group && gid !== undefined && /^[0-9]+$/.test(gid)) return Number(gid)
  }
  throw new TypeError(`socketGroup: no group named ${JSON.stringify(group)} in /etc/group (pass the gid as a number)`)
}

/** Removes a socket file left by a plugin that died; refuses a live socket or a file that is not a socket. */
async function clearStaleSocket(path: string): Promise<void> {
  let info
  try {
    info = await lstat(path)
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return
    throw error
  }
  if (!info.isSocket()) throw new Error(`socket: ${path} exists and is not a socket; not removing it`)
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path)
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (live) throw new Error(`socket: ${path} is in use by a running server`)
  await unlink(path)
}

/** `promise`, or a failure once `deadline` (a performance.now() time) passes; `budgetMs` is for the message. */
function withTimeout<T>(promise: Promise<T>, deadline: number, budgetMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_, reject) => {
    const refuse = () => reject(new Refusal(Code.DEADLINE_EXCEEDED, `${what} did not answer within ${budgetMs} ms`))
    timer = setTimeout(refuse, Math.max(0, deadline - performance.now()))
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function integer(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${name}: expected an integer from ${min} to ${max}`)
  return value
}

/** A root's name in a chain, as core checks it (part of store keys and of encrypted data). */
const ROOT_NAME = /^[A-Za-z0-9._-]{1,64}$/
const PROBE_PLAINTEXT = new Uint8Array(0)
const PROBE_ASSOCIATED_DATA = 'kms-proxy.dev/k8s/v2 health probe'
const MAX_STALE_RETRIES = 1100
/**
 * How long before its age limit the primary KEK is replaced by Status: two of kube-apiserver's
 * healthy polls (1 min each) plus one unhealthy interval (10 s), so the rotation lands at a poll
 * even when one poll is missed, and never between a Status and the Encrypt that follows it. A
 * quarter of the chain's maxKekAgeMs when that is shorter.
 */
const ROTATE_AHEAD_MS = 2 * 60_000 + 10_000
/** Uses of the primary kept in reserve the same way: a quarter of maxWrapsPerKek when that is fewer. Covers the DEK pool (16 by default). */
const ROTATE_AHEAD_USES = 1024

/** `DecryptResponse { bytes plaintext = 1; }` by hand, so the seed is zeroed right after the one copy made here, whenever grpc-js serializes. */
function serializeDecryptResponse(response: { plaintext: Uint8Array }): Buffer {
  const plaintext = response.plaintext
  const length: number[] = []
  for (let n = plaintext.length; ; n >>>= 7) {
    if (n < 0x80) {
      length.push(n)
      break
    }
    length.push((n & 0x7f) | 0x80)
  }
  // proto3 leaves a field at its default (empty bytes) out.
  const out = Buffer.alloc(plaintext.length === 0 ? 0 : 1 + length.length + plaintext.length)
  if (plaintext.length > 0) {
    out[0] = (1 << 3) | 2 // field 1, length-delimited
    out.set(length, 1)
    out.set(plaintext, 1 + length.length)
  }
  plaintext.fill(0)
  return out
}

/**
 * Starts the KMS v2 plugin on `socket`. Resolves once kube-apiserver can connect. A stale socket
 * file from a plugin that died is removed; a live one is an error.
 *
 * @throws TypeError - a malformed socket (a relative path, an abstract socket without
 *   `allowAbstractSocket` or off Linux), no `chain`, an option of the wrong type.
 * @throws RangeError - a number out of range (`healthCacheMs`, `socketMode`, `maxRequestBytes`, a gid).
 * @throws Error - the socket path is in use by a running server, or exists and is not a socket.
 * @example
 * ```ts
 * const chain = await KeyChain.open({ rootKey, store: fileStore('/var/lib/kms-proxy/keys.json'), name: 'cluster-a' })
 * const plugin = await serveKmsPlugin({ socket: '/run/kms-proxy/kms.sock', chain, rootKey })
 * process.on('SIGTERM', () => plugin.close())
 * plugin.stats().health.healthz // 'ok' while it can serve
 * ```
 */
export async function serveKmsPlugin(options: KmsPluginOptions): Promise<KmsPlugin> {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const endpoint = parseEndpoint(options.socket, options.allowAbstractSocket === true)
  const chain = options.chain
  if (!(chain instanceof KeyChain)) throw new TypeError('chain: expected a KeyChain (KeyChain.open)')
  // A chain name is at most 255 UTF-16 units, so at most 765 UTF-8 bytes: every key_id fits 1 KiB.
  const healthCacheMs = integer('healthCacheMs', options.healthCacheMs, 3_600_000, 0, 24 * 3600 * 1000)
  const healthTimeoutMs = integer('healthTimeoutMs', options.healthTimeoutMs, 2_500, 1, 60_000)
  const socketMode = integer('socketMode', options.socketMode, 0o600, 0, 0o777)
  const maxRequestBytes = integer('maxRequestBytes', options.maxRequestBytes, 64 * 1024, 1024, 4 * 1024 * 1024)
  const { rootKey, roots, healthCheck, onRequest, onHealthChange } = options
  const isRootKey = (r: unknown) => typeof r === 'object' && r !== null && typeof (r as RootKey).newKek === 'function'
  if (rootKey !== undefined && !isRootKey(rootKey)) throw new TypeError('rootKey: expected a RootKey')
  if (roots !== undefined && rootKey !== undefined) throw new TypeError('give rootKey or roots, not both')
  // The roots to probe, by name; '' for rootKey, whose verdict is the only one.
  const probed: [string, RootKey][] = rootKey ? [['', rootKey]] : []
  if (roots !== undefined) {
    if (typeof roots !== 'object' || roots === null) throw new TypeError('roots: expected an object of root keys by name')
    for (const [name, root] of Object.entries(roots)) {
      if (!ROOT_NAME.test(name)) throw new TypeError(`roots: ${JSON.stringify(name)} is not a root name (1 to 64 letters, digits, ".", "_", "-")`)
      if (!isRootKey(root)) throw new TypeError(`roots.${name}: expected a RootKey`)
      probed.push([name, root])
    }
    if (probed.length === 0) throw new TypeError('roots: expected at least one root key')
  }
  const probes = probed.length > 0 || healthCheck !== undefined
  if (healthCheck !== undefined && typeof healthCheck !== 'function') throw new TypeError('healthCheck: expected a function')
  if (onRequest !== undefined && typeof onRequest !== 'function') throw new TypeError('onRequest: expected a function')
  if (onHealthChange !== undefined && typeof onHealthChange !== 'function') throw new TypeError('onHealthChange: expected a function')
  if (endpoint.kind === 'abstract' && (options.socketMode !== undefined || options.socketGroup !== undefined)) {
    throw new TypeError('socketMode, socketGroup: an abstract socket has no file, so no mode and no group')
  }
  const gid = options.socketGroup === undefined ? undefined : await groupId(options.socketGroup)

  const requests = { Status: 0, Encrypt: 0, Decrypt: 0 }
  const failures: Record<string, number> = {}
  const health: KmsPluginHealth = { ok: false, healthz: 'not checked yet', checkedAt: 0, headCheckedAt: 0, probes: 0, rootKey: { ok: undefined, checkedAt: 0 } }
  let reportedKeyId = ''
  let evaluating: Promise<void> | undefined
  let probing: Promise<void> | undefined
  let rootsChecking: Promise<void> | undefined
  let rootsCheckedAt = 0
  // The chain's limits, learnt from the head (the chain does not expose its options): an age
  // limit is exact whenever the primary is within it; a use count is a lower bound of the limit.
  let maxAgeMs: number | undefined
  let maxUsesSeen = 0

  const localPrimary = () => chain.stats().keks.find((k) => k.primary)
  const aheadMs = () => Math.min(ROTATE_AHEAD_MS, Math.floor((maxAgeMs ?? Infinity) / 4))
  const aheadUses = () => Math.min(ROTATE_AHEAD_USES, Math.floor(maxUsesSeen / 4))

  /** The root keys' reachability: one call per root, at most once per healthCacheMs; it never changes healthz. */
  function probeRoot(): Promise<void> {
    return (probing ??= (async () => {
      health.probes++
      // From the probe's start, so that probes are exactly healthCacheMs apart however long each takes.
      const checkedAt = Date.now()
      const deadline = performance.now() + healthTimeoutMs
      const probe = async (call: () => Promise<unknown>, what: string): Promise<KmsPluginRootState> => {
        try {
          await withTimeout(call(), deadline, healthTimeoutMs, what)
          return { ok: true, checkedAt }
        } catch (error) {
          return { ok: false, checkedAt, error: messageFor(error) }
        }
      }
      if (healthCheck) {
        health.rootKey = await probe(healthCheck, 'the health check')
        return
      }
      const states = await Promise.all(probed.map(([name, root]) => probe(() => root.newKek(kekAad(chain.name, 0)), name ? `the root "${name}"` : 'the root key')))
      if (roots) health.roots = Object.fromEntries(probed.map(([name], i) => [name, states[i]!]))
      const failed = probed.flatMap(([name], i) => (states[i]!.ok ? [] : [name ? `${name}: ${states[i]!.error}` : states[i]!.error!]))
      health.rootKey = failed.length === 0 ? { ok: true, checkedAt } : { ok: false, checkedAt, error: failed.join('; ') }
    })().finally(() => (probing = undefined)))
  }

  /** Which roots of the chain this plugin lacks: one store read, at most once per healthCacheMs. */
  function checkRoots(): Promise<void> {
    return (rootsChecking ??= (async () => {
      rootsCheckedAt = Date.now()
      try {
        const listed = await withTimeout(chain.listRoots(), performance.now() + healthTimeoutMs, healthTimeoutMs, 'the store')
        const unheld = listed.filter((r) => r.state !== 'removing' && !r.held).map((r) => r.name)
        if (unheld.length > 0) health.unheldRoots = unheld
        else delete health.unheldRoots
      } catch {
        // The store's trouble shows in Status's own read; the last verdict stands meanwhile.
      }
    })().finally(() => (rootsChecking = undefined)))
  }

  /** Starts a root-key probe and a check of the chain's roots in the background when due: Status never waits for them. */
  function probeIfDue(): void {
    const due = (at: number) => at === 0 || Date.now() - at >= healthCacheMs
    if (!rootsChecking && due(rootsCheckedAt)) void checkRoots()
    if (!probes || probing) return
    if (due(health.rootKey.checkedAt)) void probeRoot()
  }

  function rootKeyState(): KmsPluginHealth['rootKey'] {
    if (probes) return health.rootKey
    const s = chain.stats()
    return { ok: s.rootKeyAvailable, checkedAt: Date.now(), ...(s.rootKeyLastError === undefined ? {} : { error: wellFormed(s.rootKeyLastError) }) }
  }

  /**
   * What the next Encrypt would use without a root-key call: this process's primary KEK, if it is
   * loaded, within its age and has uses left, and the head names it. A head naming another
   * primary (a rotation by another process, or by this one since the read) leaves the answer to
   * an encryption: the chain moves to the head's primary at its next use, or, while its root key
   * cannot unwrap that one, goes on under its own (see probedUse). Without a head (the read
   * failed): this process's primary, within its age.
   */
  function usable(head: PrimaryStatus | undefined): { id: number; ageLeftMs: number; usesLeft: number } | undefined {
    const local = localPrimary()
    if (!local) return undefined
    if (head) {
      return head.id === local.id && head.loaded && head.ageLeftMs > 0 && head.usesLeft > 0 ? { id: local.id, ageLeftMs: head.ageLeftMs, usesLeft: head.usesLeft } : undefined
    }
    return withinAge(local)
  }

  function withinAge(k: { id: number; createdAt: number }): { id: number; ageLeftMs: number; usesLeft: number } | undefined {
    const ageLeftMs = maxAgeMs === undefined ? Infinity : k.createdAt + maxAgeMs - Date.now()
    return ageLeftMs > 0 ? { id: k.id, ageLeftMs, usesLeft: Infinity } : undefined
  }

  /** The KEK an encryption just used, when the head names another: what Encrypt answers until the chain can move. */
  function probedUse(data: Uint8Array): { id: number; ageLeftMs: number; usesLeft: number } | undefined {
    const id = decodeHeader(data).kekId
    const k = chain.stats().keks.find((x) => x.id === id)
    return k ? withinAge(k) : undefined
  }

  /**
   * One Status evaluation: read the head; when this process has no usable primary, do what the
   * next Encrypt would (load the head's primary, or rotate); rotate ahead of the limits; report
   * the KEK that Encrypt will use. Healthy exactly when there is one.
   */
  async function evaluate(): Promise<void> {
    const deadline = performance.now() + healthTimeoutMs
    const bounded = <T>(promise: Promise<T>, what: string) => withTimeout(promise, deadline, healthTimeoutMs, what)
    const degraded: string[] = []
    let head: PrimaryStatus | undefined
    let storeProblem: string | undefined
    const readHead = async () => {
      try {
        head = await bounded(chain.primaryStatus(), 'the store')
        storeProblem = undefined
        if (head && head.ageLeftMs > 0) maxAgeMs = Math.round(head.ageLeftMs + Date.now() - head.createdAt)
        if (head) maxUsesSeen = Math.max(maxUsesSeen, head.usesLeft)
      } catch (error) {
        head = undefined
        storeProblem = messageFor(error)
      }
    }
    await readHead()
    let use = usable(head)
    let problem: string | undefined
    // No usable primary (a rotation elsewhere dropped it, or none is loaded): do what the next
    // Encrypt would. No head (the store is down): the chain refuses to encrypt once it has gone
    // maxStalenessMs without reading it, so only an encryption tells whether Encrypt still works.
    if (!use || storeProblem) {
      try {
        // A head naming another primary: the next use tries to load it now, not after the
        // chain's retry period (once per Status, so one root-key call a minute while it is down).
        if (head && !storeProblem) await bounded(chain.refresh(), 'the store')
        const probe = await bounded(chain.encrypt(PROBE_PLAINTEXT, { associatedData: PROBE_ASSOCIATED_DATA }), 'the key chain')
        if (!storeProblem) await readHead()
        use = usable(head) ?? probedUse(probe)
      } catch (error) {
        // With a usable primary, only the chain's own refusal counts: an encryption that ran out of
        // this Status's budget (a store that hangs) says nothing certain about the next Encrypt.
        if (!(use && error instanceof Refusal)) {
          use = undefined
          problem = messageFor(error) // the head read before stays: the budget may be spent
        }
      }
    }
    // Ahead of the limits, so that the Encrypt kube-apiserver sends after this Status does not rotate.
    if (use) {
      if (use.ageLeftMs < aheadMs() || use.usesLeft < aheadUses()) {
        try {
          await bounded(chain.rotate(), 'the root key')
          await readHead()
          use = usable(head) ?? use
        } catch (error) {
          degraded.push(`rotation due in ${Math.ceil(use.ageLeftMs / 1000)} s failed: ${messageFor(error)}`)
        }
      }
    }
    const root = rootKeyState()
    if (root.ok === false) degraded.unshift(`root key: ${root.error ?? 'unavailable'}`)
    if (storeProblem) degraded.push(`store: ${storeProblem}`)
    if (health.unheldRoots) {
      degraded.push(`the chain's roots ${health.unheldRoots.join(', ')} are not held by this plugin: it cannot rotate until redeployed with them`)
    }

    const keyIdOf = (id: number) => keyIdFor(chain.name, id)
    // While the store's primary cannot be loaded (this node's root key is down), Encrypt goes on
    // under the KEK this process holds, and Status says its key_id. While Encrypt cannot be
    // served at all, the key_id stays the one last answered: kube-apiserver
    // extends its current seed's write window at every Status whose key_id matches it (healthy
    // or not), and a new key_id would make it ask Encrypt for a seed that cannot be made, then
    // refuse writes once that window (3 minutes) ends. So a rotation by another process that this
    // plugin cannot load yet (its root key down) shows once it can serve it. Before any report
    // (a restart during an outage) it is the store's primary.
    reportedKeyId = use ? keyIdOf(use.id) : reportedKeyId || (head ? keyIdOf(head.id) : '')
    if (head && keyIdOf(head.id) !== reportedKeyId) {
      degraded.push(`key_id ${reportedKeyId} kept: the store's primary ${keyIdOf(head.id)} cannot be loaded yet`)
    }
    const before = `${health.healthz}|${health.degraded}`
    health.ok = use !== undefined
    health.healthz = use
      ? 'ok'
      : `unhealthy: cannot serve Encrypt: ${problem ?? (storeProblem ? `store: ${storeProblem}` : 'the primary KEK is not loaded')}`
    health.checkedAt = Date.now()
    if (degraded.length > 0) health.degraded = degraded.join('; ')
    else delete health.degraded
    // A probe's own result is written by the probe (it may finish after this line was reached).
    if (!probes) health.rootKey = root
    if (head) health.primary = { keyId: keyIdOf(head.id), ageLeftMs: head.ageLeftMs, usesLeft: head.usesLeft, loaded: head.loaded }
    if (`${health.healthz}|${health.degraded}` !== before) {
      try {
        onHealthChange?.(snapshot())
      } catch {
        // A logging hook must not break Status.
      }
    }
  }

  const snapshot = (): KmsPluginHealth => ({
    ...health,
    headCheckedAt: Math.max(0, chain.stats().headCheckedAt), // -Infinity before the first read
    rootKey: { ...health.rootKey },
    ...(health.roots ? { roots: Object.fromEntries(Object.entries(health.roots).map(([n, r]) => [n, { ...r }])) } : {}),
    ...(health.unheldRoots ? { unheldRoots: [...health.unheldRoots] } : {}),
    ...(health.primary ? { primary: { ...health.primary } } : {}),
  })
  const evaluateOnce = () => (evaluating ??= evaluate().finally(() => (evaluating = undefined)))

  async function encrypt(request: { plaintext: Buffer; uid: string }) {
    const plaintext = request.plaintext
    if (plaintext.length === 0) throw new Refusal(Code.INVALID_ARGUMENT, 'plaintext is empty')
    if (plaintext.length > MAX_PLAINTEXT_BYTES) {
      throw new Refusal(Code.INVALID_ARGUMENT, `plaintext is ${plaintext.length} bytes; at most ${MAX_PLAINTEXT_BYTES} fit the 1024-byte ciphertext limit`)
    }
    try {
      // After a rotation for usage the chain may still hold DEKs prepared under the previous KEK;
      // encrypt again until the data is under the current primary, the one Status reports
      // (bounded: the pool holds at most 1024).
      for (let attempt = 0; ; attempt++) {
        const data = await chain.encrypt(plaintext, { associatedData: SEED_ASSOCIATED_DATA })
        const header = decodeHeader(data)
        const primary = localPrimary()?.id
        if (primary !== undefined && header.kekId !== primary && attempt < MAX_STALE_RETRIES) continue
        const { ciphertext, annotations } = splitEncryptedData(data, header.headerLength)
        const keyId = keyIdFor(chain.name, header.kekId)
        const problem = ciphertextProblem(ciphertext) ?? annotationsProblem(annotations)
        if (problem) throw new Refusal(Code.FAILED_PRECONDITION, `this root key's output does not fit KMS v2: ${problem}`)
        reportedKeyId = keyId // kube-apiserver's seed is under this key_id now: a Status that cannot serve a newer one keeps it
        return { ciphertext, key_id: keyId, annotations }
      }
    } finally {
      plaintext.fill(0) // the seed is kube-apiserver's DEK source: no copy lingers here
    }
  }

  async function decrypt(request: { ciphertext: Buffer; uid: string; key_id: string; annotations: Record<string, Buffer> }) {
    const annotations = request.annotations ?? {}
    const problem = ciphertextProblem(request.ciphertext) ?? keyIdProblem(request.key_id) ?? annotationsProblem(annotations)
    if (problem) throw new Refusal(Code.INVALID_ARGUMENT, problem)
    const kekId = parseKeyId(request.key_id, chain.name)
    if (kekId === undefined) throw new Refusal(Code.NOT_FOUND, 'unknown key_id: not a KEK of this key chain')
    const joined = joinEncryptedData(request.ciphertext, annotations)
    if (!joined.ok) throw new Refusal(Code.INVALID_ARGUMENT, joined.problem)
    if (joined.kekId !== kekId) throw new Refusal(Code.INVALID_ARGUMENT, 'key_id does not match the ciphertext')
    const plaintext = await chain.decrypt(joined.data, { associatedData: SEED_ASSOCIATED_DATA })
    return { plaintext: Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.length) }
  }

  async function status() {
    probeIfDue()
    await evaluateOnce()
    return { version: KMS_API_VERSION, healthz: health.healthz, key_id: reportedKeyId }
  }

  type Handler = (request: never) => Promise<object>
  function unary(method: 'Status' | 'Encrypt' | 'Decrypt', handler: Handler): grpc.handleUnaryCall<unknown, unknown> {
    return (call, callback) => {
      const started = performance.now()
      requests[method]++
      const request = call.request as { uid?: string }
      const uid = typeof request?.uid === 'string' && request.uid.length > 0 ? request.uid.slice(0, 128) : undefined
      const report = (code: grpc.status, extra: Partial<KmsPluginRequestEvent>) => {
        if (code !== Code.OK) failures[codeName(code)] = (failures[codeName(code)] ?? 0) + 1
        try {
          onRequest?.({ method, ...(uid ? { uid } : {}), code: codeName(code), ms: performance.now() - started, ...extra })
        } catch {
          // A logging hook must not break the answer.
        }
      }
      handler(call.request as never).then(
        (response) => {
          report(Code.OK, 'key_id' in response ? { keyId: String(response.key_id) } : {})
          callback(null, response)
          if (method === 'Decrypt') {
            // serializeDecryptResponse zeroes the seed once encoded; an answer never encoded (the
            // call was cancelled) is zeroed here.
            const seed = (response as { plaintext: Buffer }).plaintext
            if (call.cancelled) seed.fill(0)
            else call.once('cancelled', () => seed.fill(0))
          }
        },
        (error: unknown) => {
          const code = grpcCodeFor(error)
          const errorCode = error instanceof KmsProxyError ? error.code : undefined
          report(code, errorCode ? { error: errorCode } : {})
          callback({ code, details: messageFor(error) })
        },
      )
    }
  }

  const path = endpoint.kind === 'file' ? endpoint.path : undefined
  if (path) await clearStaleSocket(path)
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxRequestBytes,
    'grpc.max_send_message_length': 64 * 1024,
  })
  const service = { ...loadKmsService().service }
  service.Decrypt = { ...service.Decrypt!, responseSerialize: serializeDecryptResponse as (value: unknown) => Buffer }
  server.addService(service, {
    Status: unary('Status', status as Handler),
    Encrypt: unary('Encrypt', encrypt as Handler),
    Decrypt: unary('Decrypt', decrypt as Handler),
  })
  const bind = (address: string) =>
    new Promise<void>((resolve, reject) => {
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve()))
    })
  if (endpoint.kind === 'abstract') {
    // No file: nothing to chmod, nothing stale to clear (the name goes when its process does).
    await bind(grpcAddress(endpoint)).catch((error: Error) => {
      server.forceShutdown()
      throw /EADDRINUSE/.test(error.message) ? new Error(`socket: the abstract socket @${endpoint.name} is in use by a running server`) : error
    })
  } else {
    // The socket is made with the process umask's mode (0777 under umask 0): bound in place, it
    // would take calls from any local user until a chmod. So it is bound in a private (0700)
    // folder next to `path`, given its group and mode, and only then linked into place (a link,
    // unlike a rename, fails if another plugin took the path meanwhile, as a bind in place would).
    const staging = await mkdtemp(join(dirname(endpoint.path), '.kms-proxy-'))
    try {
      const bound = join(staging, 's')
      await bind(`unix:${bound}`)
      if (gid !== undefined) await chown(bound, -1, gid)
      await chmod(bound, socketMode)
      await link(bound, endpoint.path).catch((error: { code?: string }) => {
        throw error.code === 'EEXIST' ? new Error(`socket: ${endpoint.path} was created by someone else while this server started`) : error
      })
    } catch (error) {
      server.forceShutdown()
      throw error
    } finally {
      await rm(staging, { recursive: true, force: true })
    }
  }

  let closed: Promise<void> | undefined
  return {
    socket: endpoint.kind === 'file' ? endpoint.path : `@${endpoint.name}`,
    stats: () => ({
      requests: { ...requests },
      failures: { ...failures },
      health: snapshot(),
      keyId: reportedKeyId || (localPrimary() ? keyIdFor(chain.name, localPrimary()!.id) : ''),
      chain: chain.stats(),
    }),
    async checkHealth() {
      await rootsChecking
      await checkRoots()
      if (probes) {
        await probing
        await probeRoot()
      }
      await evaluating
      await evaluateOnce()
      return health.healthz
    },
    close() {
      return (closed ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown()
            resolve()
          }, 5_000)
          server.tryShutdown(() => {
            clearTimeout(timer)
            resolve()
          })
        })
        if (path) await unlink(path).catch(() => {})
        chain.close()
      })())
    },
  }
}
