/** explain(): the one place that turns an error into an exit code and a line. */
import { expect, it } from 'vitest'
import { DecryptError, DestroyedKekError, RetiredKekError, RootKeyError } from '@kms-proxy/core'
import { EXIT, explain } from '../src/exit.ts'

it('maps each kind of failure to its own exit code; a runtime fault is not a usage error', () => {
  const cases: [unknown, number][] = [
    [new DecryptError('decryption failed'), EXIT.TAMPERED],
    [new RootKeyError('wrong passphrase'), EXIT.ROOT_KEY],
    [new RootKeyError('the KMS did not answer', { retryable: true }), EXIT.ROOT_KEY_UNREACHABLE],
    [new RetiredKekError('KEK 1 is retired'), EXIT.RETIRED],
    [new DestroyedKekError('KEK 1 was destroyed'), EXIT.DESTROYED],
    [new TypeError('kdf: expected pbkdf2, scrypt or argon2id'), EXIT.USAGE], // a bad option
    [new RangeError('the input is over 268435456 bytes'), EXIT.USAGE],
    [Object.assign(new TypeError("Unknown option '--x'"), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' }), EXIT.USAGE],
    [Object.assign(new TypeError('Invalid state: Unable to enqueue'), { code: 'ERR_INVALID_STATE' }), EXIT.INTERNAL],
    [Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }), EXIT.IO],
    [Object.assign(new Error('no space'), { code: 'ENOSPC', path: '/x' }), EXIT.IO],
    [new Error('something else'), EXIT.INTERNAL],
  ]
  for (const [error, code] of cases) expect(explain(error).exitCode, String(error)).toBe(code)
})

it("names a retired or destroyed KEK in hex, with the command that undoes a retirement, not core's API", () => {
  expect(explain(new RetiredKekError('KEK 2061555633 is retired: unretireKek(2061555633) makes it decrypt again')).message).toBe(
    'KEK 0x7ae0d7b1 is retired: `kms-proxy unretire 0x7ae0d7b1` makes it decrypt again (`kms-proxy status` lists what is retired)',
  )
  expect(explain(new RetiredKekError('this chain is retired: unretireChain() makes it usable again')).message).toBe(
    'the chain is retired: `kms-proxy unretire --chain` makes it usable again (`kms-proxy status` lists what is retired)',
  )
  expect(explain(new DestroyedKekError('KEK 2061555633 was destroyed: data under it cannot be decrypted')).message).toBe(
    'KEK 0x7ae0d7b1 was destroyed: its records are deleted for good, and nobody can decrypt data under that KEK',
  )
  expect(explain(new DestroyedKekError('this chain was destroyed: it cannot come back')).exitCode).toBe(EXIT.DESTROYED)
})
