import { expect, it } from 'vitest'
import * as pkcs11 from '../src/index.ts'

it('exports no base64 helpers: they are @kms-proxy/core\'s (toBase64, fromBase64)', () => {
  expect(Object.keys(pkcs11)).toContain('pkcs11BridgeRootKey')
  for (const name of ['toBase64', 'fromBase64']) expect(Object.keys(pkcs11)).not.toContain(name)
})
