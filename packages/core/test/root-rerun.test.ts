/**
 * A root change cut short and rerun with another passphrase: the rerun must prove the root
 * against the wraps it already has under that name, or it splits the root's KEKs between two
 * passphrases.
 */
import { expect, it } from 'vitest'
import { KeyChain, aesRootKey, kekAad, memoryStore, type RootKey } from '@kms-proxy/core'
import { passphraseRootKey } from '@kms-proxy/passphrase'

const FAST = 1_000
const text = (b: Uint8Array) => new TextDecoder().decode(b)

async function chainOfKeks(n: number) {
  const store = memoryStore()
  const rootBytes = crypto.getRandomValues(new Uint8Array(32))
  const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store })
  const messages: Array<{ text: string; encrypted: Uint8Array }> = []
  for (let i = 0; i < n; i++) {
    await chain.rotate()
    messages.push({ text: `m${i}`, encrypted: await chain.encrypt(`m${i}`) })
  }
  return { store, chain, messages, rootBytes }
}

it('an addRoot cut short and rerun with a mistyped passphrase wraps nothing under it: the rerun must prove the root on a wrap it already has', async () => {
  const { store, chain, messages, rootBytes } = await chainOfKeks(20)
  // The first run stops after 10 wraps (a crash, or the tab closed): the head says 'adding'.
  const right = passphraseRootKey({ passphrase: 'recovery phrase', iterations: FAST })
  let left = 10
  const cut: RootKey = {
    kind: right.kind,
    newKek: (aad) => right.newKek(aad),
    unwrapKek: (w, aad, o) => right.unwrapKek(w, aad, o),
    wrapKek: (kek, aad) => (left-- > 0 ? right.wrapKek!(kek, aad) : Promise.reject(new Error('cut short'))),
  }
  await expect(chain.addRoot('recovery', cut)).rejects.toThrow()
  const wrapsBefore = (await store.listKeks('default')).filter((r) => r.root === 'recovery').length
  expect(wrapsBefore).toBeGreaterThan(0)
  // The rerun, in another process, with a typo: it must not add wraps the right phrase cannot open.
  const rerun = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store })
  const typo = passphraseRootKey({ passphrase: 'recovery phrasf', iterations: FAST })
  const error = await rerun.addRoot('recovery', typo).then(() => undefined, (e: unknown) => e)
  const wraps = (await store.listKeks('default')).filter((r) => r.root === 'recovery')
  const opened = await Promise.all(wraps.map((r) => passphraseRootKey({ passphrase: 'recovery phrase', iterations: FAST }).unwrapKek(r.wrapped, kekAad('default', r.id)).then(() => true, () => false)))
  expect({ wraps: wraps.length, openedByTheRightPhrase: opened.filter(Boolean).length }).toEqual({ wraps: wrapsBefore, openedByTheRightPhrase: wrapsBefore })
  expect(error).toMatchObject({ code: 'ERR_ROOT_KEY' })
  // and the right phrase finishes the change
  const finished = await rerun.addRoot('recovery', passphraseRootKey({ passphrase: 'recovery phrase', iterations: FAST }))
  expect(finished.wrapped).toBe(20 - wrapsBefore)
  const recovered = await KeyChain.open({ roots: { recovery: passphraseRootKey({ passphrase: 'recovery phrase', iterations: FAST }) }, store })
  for (const m of messages) expect(text(await recovered.decrypt(m.encrypted))).toBe(m.text)
})

