/**
 * Who may call the bridge: bearer tokens, each with a name for the log and optionally the chain
 * names it is scoped to. A scope is checked against the chain name inside the KEK-wrap AAD
 * (`kekAad(chainName, kekId)` in @kms-proxy/core), which the HSM binds into the wrap: a caller
 * cannot name one chain and unwrap another's KEK, because the wrong AAD fails the GCM tag.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { kekAad } from '@kms-proxy/core'

/** One bearer token the bridge accepts. */
export interface Pkcs11BridgeToken {
  /**
   * Who holds this token, shown in the log as `caller=<name>` (the token itself never is):
   * 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or a digit.
   */
  name: string
  /** The bearer token. At least 16 characters; use 32 random bytes. Never logged or shown. */
  token: string
  /**
   * The key chains this token may generate and unwrap KEKs for: an exact chain name, or a prefix
   * ending in `*` (`'orders/*'` matches `orders/eu`, not `orders`; `'*'` every chain). The
   * request's AAD must then be a KEK-wrap AAD naming such a chain. Omitted: any chain and any
   * associated data, as the `token` option.
   */
  chains?: readonly string[]
}

/** A caller, found by its token. `allows` is undefined for an unscoped token. */
export interface Caller {
  readonly name: string
  readonly allows?: (chain: string) => boolean
}

interface Entry extends Caller {
  readonly digest: Buffer
}

/** The name logged for the unscoped `token` option. */
export const DEFAULT_CALLER = 'default'

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const MIN_TOKEN = 16

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest()
}

function compileScope(name: string, chains: unknown): ((chain: string) => boolean) | undefined {
  if (chains === undefined) return undefined
  if (!Array.isArray(chains) || chains.length === 0) throw new TypeError(`tokens: "${name}" has chains that is not a non-empty array (omit it for an unscoped token)`)
  const exact = new Set<string>()
  const prefixes: string[] = []
  for (const pattern of chains as unknown[]) {
    if (typeof pattern !== 'string' || pattern === '' || pattern.replace(/\*$/, '').length > 255) throw new TypeError(`tokens: "${name}" has a chain pattern that is neither a chain name (1 to 255 characters) nor such a prefix ending in *`)
    const star = pattern.indexOf('*')
    if (star !== -1 && star !== pattern.length - 1) throw new TypeError(`tokens: "${name}" has a chain pattern with * elsewhere than at its end`)
    if (star === -1) exact.add(pattern)
    else prefixes.push(pattern.slice(0, -1))
  }
  return (chain) => exact.has(chain) || prefixes.some((p) => chain.startsWith(p))
}

/**
 * Checks the token options and returns the lookup. TypeError names the field and the token's
 * name, never the token.
 */
export function callersFrom(token: unknown, tokens: unknown, who: string): (authorization: string | undefined) => Caller | undefined {
  const list: { name: unknown; token: unknown; chains?: unknown }[] = []
  if (token !== undefined) list.push({ name: DEFAULT_CALLER, token })
  if (tokens !== undefined) {
    if (!Array.isArray(tokens) || tokens.length === 0) throw new TypeError(`${who}: tokens must be a non-empty array of { name, token, chains? }`)
    for (const t of tokens as unknown[]) {
      if (typeof t !== 'object' || t === null) throw new TypeError(`${who}: tokens must be a non-empty array of { name, token, chains? }`)
      list.push(t as (typeof list)[number])
    }
  }
  if (list.length === 0) throw new TypeError(`${who}: token or tokens is required`)
  const entries: Entry[] = []
  for (const t of list) {
    if (typeof t.name !== 'string' || !NAME.test(t.name)) throw new TypeError(`${who}: a token's name must be 1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)`)
    const name = t.name
    if (typeof t.token !== 'string' || t.token.length < MIN_TOKEN) throw new TypeError(`${who}: the token of "${name}" must be a string of at least ${MIN_TOKEN} characters`)
    const entry: Entry = { name, digest: digest(`Bearer ${t.token}`), allows: compileScope(name, t.chains) }
    if (entries.some((e) => e.name === name)) throw new TypeError(`${who}: two tokens are named "${name}"`)
    const twin = entries.find((e) => timingSafeEqual(e.digest, entry.digest))
    if (twin) throw new TypeError(`${who}: "${twin.name}" and "${name}" have the same token`)
    entries.push(entry)
  }
  return (authorization) => {
    // Constant time: digests of equal length whatever the header's length, and no early exit.
    const given = digest(authorization ?? '')
    let found: Entry | undefined
    for (const e of entries) if (timingSafeEqual(given, e.digest)) found = e
    return found && { name: found.name, allows: found.allows }
  }
}

const PREFIX = kekAad('', 0).subarray(0, -4) // the label, from core, so the layouts cannot drift
const NAME_AT = PREFIX.length + 4
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/**
 * The chain name and KEK id inside a KEK-wrap AAD, or undefined when `aad` is not exactly the
 * AAD `kekAad` makes for some chain name (1..255 UTF-16 units) and id.
 */
export function parseKekAad(aad: Uint8Array): { chain: string; kekId: number } | undefined {
  if (aad.length <= NAME_AT) return undefined
  for (let i = 0; i < PREFIX.length; i++) if (aad[i] !== PREFIX[i]) return undefined
  const kekId = new DataView(aad.buffer, aad.byteOffset + PREFIX.length, 4).getUint32(0)
  let chain: string
  try {
    chain = strictUtf8.decode(aad.subarray(NAME_AT))
  } catch {
    return undefined
  }
  if (chain.length > 255) return undefined
  const again = kekAad(chain, kekId)
  if (again.length !== aad.length || again.some((b, i) => b !== aad[i])) return undefined
  return { chain, kekId }
}
