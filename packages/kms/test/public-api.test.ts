import { expect, it } from 'vitest'
import * as kms from '../src/index.ts'

it('exports the four root keys and nothing internal: no signV4, no base64 helpers', () => {
  expect(Object.keys(kms).sort()).toEqual(['awsKmsRootKey', 'azureKeyVaultRootKey', 'gcpKmsRootKey', 'vaultTransitRootKey'])
})
