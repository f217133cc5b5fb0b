import { expect, it } from 'vitest'
import * as webauthn from '../src/index.ts'

it('exports no base64url helpers: they are @kms-proxy/core\'s (toBase64Url, fromBase64Url)', () => {
  expect(Object.keys(webauthn)).toContain('webauthnRootKey')
  for (const name of ['toBase64url', 'fromBase64url', 'toBase64Url', 'fromBase64Url']) expect(Object.keys(webauthn)).not.toContain(name)
})
