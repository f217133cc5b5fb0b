/**
 * What the plugin sends kube-apiserver and reads back: the limits of KMS v2, the key_id, and the
 * split of an encrypted data into ciphertext + annotations. Pure: no crypto, no I/O, no gRPC.
 *
 * Limits (kube-apiserver, k8s.io/apiserver .../envelope/kmsv2/envelope.go, which checks them on
 * every answer and on every object it reads back from etcd):
 *   ciphertext   1 .. 1024 bytes  (encryptedDEKSourceMaxSize)
 *   key_id       1 .. 1024 bytes  (KeyIDMaxSize, UTF-8 bytes)
 *   annotations  keys are fully qualified domain names (IsFullyQualifiedDomainName);
 *                the keys' and values' lengths add up to at most 32,768 bytes (annotationsMaxSize)
 */
import { FORMAT_VERSION_ROOTS, OVERHEAD_BYTES } from '@kms-proxy/core'

/** Largest ciphertext kube-apiserver accepts from Encrypt (encryptedDEKSourceMaxSize). */
export const MAX_CIPHERTEXT_BYTES = 1024
/** Largest key_id kube-apiserver accepts, in UTF-8 bytes (KeyIDMaxSize). */
export const MAX_KEY_ID_BYTES = 1024
/** Largest total of annotation keys and values kube-apiserver accepts (annotationsMaxSize). */
export const MAX_ANNOTATIONS_BYTES = 32 * 1024
/** The version string of the API; kube-apiserver accepts no other in a v2 configuration. */
export const KMS_API_VERSION = 'v2'
/** Where Encrypt puts the root-wrapped KEK when the chain's store embeds KEKs in the data. */
export const KEK_ANNOTATION = 'kek.kms-proxy.dev'
/**
 * Associated data of every seed the plugin encrypts: data the plugin wrote cannot be decrypted
 * by a plain `chain.decrypt` without it, and data from another use of the same chain cannot be
 * passed off as a Kubernetes DEK seed.
 */
export const SEED_ASSOCIATED_DATA = 'kms-proxy.dev/k8s/v2 seed'

/**
 * docs/FORMAT.md: version (offset 0: 1, or 2 when the KEK is embedded once per root), KEK id (u32
 * at offset 1), flags (offset 5; bit 0 = KEK embedded). v1 embeds `u16 length || wrapped KEK`;
 * v2 embeds `u8 count || per root: u8 name length || name || u16 length || wrapped KEK`.
 */
const FIXED_HEADER = 6
const KEK_ID_OFFSET = 1
const FLAG_EMBEDDED_KEK = 0x01
/** The largest plaintext whose ciphertext still fits in 1024 bytes (1024 - 78 = 946). kube-apiserver sends 32. */
export const MAX_PLAINTEXT_BYTES = MAX_CIPHERTEXT_BYTES - OVERHEAD_BYTES

const encoder = new TextEncoder()
export const utf8Length = (s: string): number => encoder.encode(s).length

const LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/

/**
 * RFC 1123 fully qualified domain name as kube-apiserver checks annotation keys: at most 253
 * characters (a trailing dot allowed), at least two labels, each 1-63 of [a-z0-9-], starting and
 * ending with a letter or digit.
 */
export function isFullyQualifiedDomainName(name: string): boolean {
  if (typeof name !== 'string' || name.length === 0) return false
  const n = name.endsWith('.') ? name.slice(0, -1) : name
  if (n.length === 0 || n.length > 253) return false
  const labels = n.split('.')
  if (labels.length < 2) return false
  return labels.every((l) => l.length <= 63 && LABEL.test(l))
}

/** Why a set of annotations would be refused, or undefined when kube-apiserver accepts it. */
export function annotationsProblem(annotations: Record<string, Uint8Array>): string | undefined {
  let total = 0
  for (const [key, value] of Object.entries(annotations)) {
    if (!isFullyQualifiedDomainName(key)) return 'an annotation key is not a fully qualified domain name'
    total += utf8Length(key) + value.length
  }
  if (total > MAX_ANNOTATIONS_BYTES) return `annotations total ${total} bytes; at most ${MAX_ANNOTATIONS_BYTES}`
  return undefined
}

/** Why a key_id would be refused, or undefined. */
export function keyIdProblem(keyId: string): string | undefined {
  if (typeof keyId !== 'string' || keyId.length === 0) return 'key_id is empty'
  const n = utf8Length(keyId)
  if (n > MAX_KEY_ID_BYTES) return `key_id is ${n} bytes; at most ${MAX_KEY_ID_BYTES}`
  return undefined
}

/** Why a ciphertext would be refused, or undefined. */
export function ciphertextProblem(ciphertext: Uint8Array): string | undefined {
  if (ciphertext.length === 0) return 'ciphertext is empty'
  if (ciphertext.length > MAX_CIPHERTEXT_BYTES) return `ciphertext is ${ciphertext.length} bytes; at most ${MAX_CIPHERTEXT_BYTES}`
  return undefined
}

/**
 * key_id of a KEK: `<chain name>/<KEK id as 8 hex digits>`. It names the KEK, so it changes
 * exactly when the chain's primary KEK changes, and Decrypt can check it against the data.
 */
export function keyIdFor(chainName: string, kekId: number): string {
  return `${chainName}/${kekId.toString(16).padStart(8, '0')}`
}

/** The KEK id in `keyId` if it names a KEK of chain `chainName`, else undefined. */
export function parseKeyId(keyId: string, chainName: string): number | undefined {
  const slash = keyId.lastIndexOf('/')
  if (slash < 0 || keyId.slice(0, slash) !== chainName) return undefined
  const hex = keyId.slice(slash + 1)
  if (!/^[0-9a-f]{8}$/.test(hex)) return undefined
  const id = Number.parseInt(hex, 16)
  return id === 0 ? undefined : id
}

/** What {@link splitEncryptedData} returns: the two parts of an Encrypt answer. */
export interface Split {
  /** The encrypted data without its embedded KEK: the Encrypt answer's ciphertext. */
  ciphertext: Uint8Array
  /** `kek.kms-proxy.dev` with the embedded KEK, or none. */
  annotations: Record<string, Uint8Array>
}

/**
 * Encrypted data -> what Encrypt answers. The embedded root-wrapped KEK(s) move out of the data
 * into the `kek.kms-proxy.dev` annotation, so the ciphertext stays 110 bytes for a 32-byte seed
 * whatever the roots' wraps weigh (a KMS ciphertext blob can be several hundred bytes, and a
 * chain of several roots carries one per root). v1: the annotation is the wrapped KEK (its u16
 * length dropped), as it always was, so annotations kube-apiserver stored before read the same.
 * v2: the annotation is the whole block after the fixed header (count, then each root's name and
 * wrap), verbatim. The flags byte keeps its "embedded" bit and the version byte stays, so Decrypt
 * knows to put the block back and how; every byte is still authenticated once joined (the header
 * is the DEK wrap's AAD).
 *
 * @param headerLength - The header's length, from core's decodeHeader.
 */
export function splitEncryptedData(data: Uint8Array, headerLength: number): Split {
  if (data.length < FIXED_HEADER || (data[5]! & FLAG_EMBEDDED_KEK) === 0) return { ciphertext: data, annotations: {} }
  const moved = data.subarray(data[0] === FORMAT_VERSION_ROOTS ? FIXED_HEADER : FIXED_HEADER + 2, headerLength)
  const ciphertext = new Uint8Array(data.length - (headerLength - FIXED_HEADER))
  ciphertext.set(data.subarray(0, FIXED_HEADER))
  ciphertext.set(data.subarray(headerLength), FIXED_HEADER)
  return { ciphertext, annotations: { [KEK_ANNOTATION]: moved.slice() } }
}

/** What {@link joinEncryptedData} returns: the encrypted data to decrypt, or why the request is refused. */
export type Joined =
  | {
      /** The parts fit together. */
      ok: true
      /** The encrypted data, with its KEK put back when it had been moved out. */
      data: Uint8Array
      /** The KEK id its header names. */
      kekId: number
    }
  | {
      /** The request is refused. */
      ok: false
      /** Why, for the gRPC answer. */
      problem: string
    }

/**
 * What Decrypt receives -> the encrypted data the chain decrypts. Checks only the framing (the
 * chain authenticates the rest): KEK id, and the KEK annotation present exactly when the flags
 * say the KEK was moved out; the version byte says whether it is one wrap (v1) or a block of
 * wraps by root (v2).
 */
export function joinEncryptedData(ciphertext: Uint8Array, annotations: Record<string, Uint8Array>): Joined {
  if (ciphertext.length < FIXED_HEADER) return { ok: false, problem: 'ciphertext is truncated' }
  const kekId = ((ciphertext[KEK_ID_OFFSET]! << 24) | (ciphertext[KEK_ID_OFFSET + 1]! << 16) | (ciphertext[KEK_ID_OFFSET + 2]! << 8) | ciphertext[KEK_ID_OFFSET + 3]!) >>> 0
  const kek = annotations[KEK_ANNOTATION]
  const embedded = (ciphertext[5]! & FLAG_EMBEDDED_KEK) !== 0
  if (!embedded) {
    if (kek !== undefined) return { ok: false, problem: `annotation ${KEK_ANNOTATION} given for data without an embedded KEK` }
    return { ok: true, data: ciphertext, kekId }
  }
  if (kek === undefined) return { ok: false, problem: `annotation ${KEK_ANNOTATION} is missing` }
  // v2: the block goes back verbatim; core's decoder checks its count, names and lengths.
  const prefix = ciphertext[0] === FORMAT_VERSION_ROOTS ? [] : [kek.length >> 8, kek.length & 0xff]
  if (kek.length === 0 || (prefix.length > 0 && kek.length > 0xffff)) return { ok: false, problem: `annotation ${KEK_ANNOTATION} has a bad length` }
  const data = new Uint8Array(ciphertext.length + prefix.length + kek.length)
  data.set(ciphertext.subarray(0, FIXED_HEADER))
  data.set(prefix, FIXED_HEADER)
  data.set(kek, FIXED_HEADER + prefix.length)
  data.set(ciphertext.subarray(FIXED_HEADER), FIXED_HEADER + prefix.length + kek.length)
  return { ok: true, data, kekId }
}
