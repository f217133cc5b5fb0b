// Encrypted notes in the browser: a passphrase root key, a key chain whose wrapped KEKs live in
// IndexedDB (@kms-proxy/indexeddb), and the notes as `kp1.` text in localStorage.
// Bundle it (see README.md): esbuild resolves the @kms-proxy packages.
import { KeyChain } from '@kms-proxy/core'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { passphraseRootKey } from '@kms-proxy/passphrase'

const NOTES = 'browser-notes:notes' // JSON array of { at, text: 'kp1.…' }
const CHECK = 'browser-notes:check' // a known text, encrypted: tells a wrong passphrase at unlock
const CHECK_TEXT = 'browser-notes v1'

const $ = (id) => document.getElementById(id)
let chain // the unlocked key chain; undefined when locked

function show(message, isError = false) {
  $('error').hidden = !isError
  $('error').textContent = isError ? message : ''
  $('status').textContent = isError ? '' : message
}

function loadNotes() {
  try {
    const list = JSON.parse(localStorage.getItem(NOTES) ?? '[]')
    return Array.isArray(list) ? list : []
  } catch {
    return []
  }
}

async function unlock(passphrase) {
  const started = performance.now()
  const rootKey = passphraseRootKey({ passphrase }) // PBKDF2-SHA-256, 600,000 iterations
  const opened = await KeyChain.open({ rootKey, store: indexedDbStore({ name: 'browser-notes' }), name: 'notes' })
  const check = localStorage.getItem(CHECK)
  if (check) {
    // One PBKDF2 derivation and one KEK unwrap: the only root-key work this session.
    if ((await opened.decryptText(check)) !== CHECK_TEXT) throw new Error('the check note does not match')
  } else {
    localStorage.setItem(CHECK, await opened.encryptText(CHECK_TEXT))
  }
  chain = opened
  const ms = Math.round(performance.now() - started)
  await render()
  $('unlock-form').hidden = true
  $('notebook').hidden = false
  show(check ? `Unlocked in ${ms} ms.` : `New notebook created in ${ms} ms. Keep the passphrase: it cannot be recovered.`)
  $('note').focus()
}

async function render() {
  const notes = loadNotes()
  const items = await Promise.all(
    notes.map(async (n) => {
      const li = document.createElement('li')
      const time = document.createElement('time')
      time.textContent = new Date(n.at).toLocaleString()
      li.append(time, await chain.decryptText(n.text, { associatedData: String(n.at) }))
      return li
    }),
  )
  $('notes').replaceChildren(...items)
  $('count').textContent = `${notes.length} note${notes.length === 1 ? '' : 's'}, encrypted`
}

async function addNote(text) {
  const at = Date.now()
  // The timestamp is bound as associated data: a note cannot be moved under another date.
  const encrypted = await chain.encryptText(text, { associatedData: String(at) })
  localStorage.setItem(NOTES, JSON.stringify([...loadNotes(), { at, text: encrypted }]))
  await render()
}

function lock() {
  chain = undefined
  $('notes').replaceChildren()
  $('notebook').hidden = true
  $('unlock-form').hidden = false
  $('passphrase').value = ''
  show('Locked.')
}

function describeError(error) {
  if (error?.code === 'ERR_ROOT_KEY') return 'Wrong passphrase: these notes were locked with a different one.'
  if (error?.code === 'ERR_DECRYPT') return 'A note could not be decrypted: it was altered.'
  return `Could not unlock: ${error?.message ?? String(error)}`
}

$('unlock-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const button = $('unlock')
  button.disabled = true
  show('Unlocking…')
  try {
    await unlock($('passphrase').value)
  } catch (error) {
    chain = undefined
    show(describeError(error), true)
  } finally {
    button.disabled = false
  }
})

$('add-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const text = $('note').value.trim()
  if (!text || !chain) return
  try {
    await addNote(text)
    $('note').value = ''
    show('Saved.')
  } catch (error) {
    show(describeError(error), true)
  }
})

$('lock').addEventListener('click', lock)
globalThis.notesReady = true
