// Encrypted notes in the browser. On first run the user picks the notebook's root key: a passkey
// (WebAuthn PRF, @kms-proxy/webauthn) or a passphrase (PBKDF2, @kms-proxy/passphrase). The key
// chain's wrapped KEKs live in IndexedDB (@kms-proxy/indexeddb); the app's own records (which
// root, its public parameters, the check text, the notes as `kp1.` text) in a second IndexedDB
// database. Bundle it (see README.md): esbuild resolves the @kms-proxy packages.
import { KeyChain } from '@kms-proxy/core'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { NO_PRF_MESSAGE, registerPrfRootKey, webauthnRootKey } from '@kms-proxy/webauthn'

const APP_DB = 'browser-notes' // object stores: settings ('root', 'check'), notes ({ at, text: 'kp1.…' })
const CHECK_TEXT = 'browser-notes v1' // encrypted as 'check': tells a wrong root at unlock, not at the first note
const CHAIN = { store: indexedDbStore({ name: 'browser-notes' }), name: 'notes' } // database kms-proxy:browser-notes

const $ = (id) => document.getElementById(id)
/** The 'root' record: { kind: 'passkey', params: { credentialId, salt } } or { kind: 'passphrase' }; undefined on first run. */
let protection
/** Built from the stored parameters when the page loads, so that a click starts the ceremony at once. */
let passkeyRoot
let chain // the unlocked key chain; undefined when locked

// ------------------------------------------------------------------------------ IndexedDB

let opening
function appDb() {
  opening ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(APP_DB, 1)
    request.onupgradeneeded = () => {
      request.result.createObjectStore('settings')
      request.result.createObjectStore('notes', { autoIncrement: true })
    }
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
  return opening
}

/** One request in its own transaction; resolves with its result once the transaction completed. */
async function idb(storeName, mode, makeRequest) {
  // 'strict': the root's parameters must be on disk before a KEK is wrapped under them.
  const tx = (await appDb()).transaction(storeName, mode, { durability: mode === 'readwrite' ? 'strict' : 'default' })
  const request = makeRequest(tx.objectStore(storeName))
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve(request.result)
    tx.onabort = tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'))
  })
}
const getSetting = (key) => idb('settings', 'readonly', (s) => s.get(key))
const putSetting = (key, value) => idb('settings', 'readwrite', (s) => s.put(value, key))

// ------------------------------------------------------------------------------ page states

function show(message, isError = false) {
  $('error').hidden = !isError
  $('error').textContent = isError ? message : ''
  $('status').textContent = isError ? '' : message
}

/** Shows the locked page for the stored protection: the first-run choice, a passkey button or a passphrase form. */
function showLocked() {
  chain = undefined
  passkeyRoot = protection?.kind === 'passkey' ? webauthnRootKey(protection.params) : undefined // a new root: the next unlock asks the authenticator again
  $('notes').replaceChildren()
  $('notebook').hidden = true
  $('backup').open = false
  $('import-file').value = ''
  $('setup').hidden = protection !== undefined
  $('passkey-unlock').hidden = protection?.kind !== 'passkey'
  $('unlock-form').hidden = protection?.kind !== 'passphrase'
  $('passphrase').value = ''
  $('passphrase').placeholder = 'Passphrase'
  $('passphrase').autocomplete = 'current-password'
  $('unlock').textContent = 'Unlock'
}

/** First run, passphrase chosen (or offered because the authenticator has no PRF). */
function offerPassphrase() {
  $('unlock-form').hidden = false
  $('passphrase').placeholder = 'New passphrase'
  $('passphrase').autocomplete = 'new-password'
  $('unlock').textContent = 'Create notebook'
  $('passphrase').focus()
}

// ------------------------------------------------------------------------------ unlock

/** Opens the chain under `rootKey`, checks (or writes) the check text, shows the notes. */
async function openNotebook(rootKey, started) {
  const opened = await KeyChain.open({ rootKey, ...CHAIN }) // no root-key call: that happens at the check
  const check = await getSetting('check')
  if (check) {
    if ((await opened.decryptText(check)) !== CHECK_TEXT) throw new Error('the check note does not match')
  } else {
    await putSetting('check', await opened.encryptText(CHECK_TEXT))
  }
  chain = opened
  const ms = Math.round(performance.now() - started)
  await render()
  for (const id of ['setup', 'passkey-unlock', 'unlock-form']) $(id).hidden = true
  $('notebook').hidden = false
  const how = protection.kind === 'passkey' ? 'with the passkey' : 'with the passphrase'
  const keep = protection.kind === 'passkey' ? 'Without this passkey the notes cannot be read.' : 'Keep the passphrase: it cannot be recovered.'
  show(check ? `Unlocked ${how} in ${ms} ms.` : `New notebook created in ${ms} ms. ${keep}`)
  $('note').focus()
}

async function unlockWithPasskey() {
  const started = performance.now()
  // First thing in the click handler: the ceremony runs with the click's user activation.
  await passkeyRoot.unlock()
  await openNotebook(passkeyRoot, started)
}

async function createWithPasskey() {
  const started = performance.now()
  // One prompt where the authenticator evaluates the PRF at creation (the root is then already
  // unlocked); otherwise unlock() below asks once more.
  const { credential, rootKey } = await registerPrfRootKey({ rpName: 'Encrypted notes', userName: 'browser-notes' })
  // The credential id and salt are public; they are stored before any KEK is wrapped under them.
  const record = { kind: 'passkey', params: credential }
  await putSetting('root', record)
  protection = record
  passkeyRoot = rootKey
  await passkeyRoot.unlock()
  await openNotebook(passkeyRoot, started)
}

async function unlockWithPassphrase(passphrase) {
  const started = performance.now()
  if (!protection) {
    const record = { kind: 'passphrase' } // PBKDF2's salt and iterations are kept in each wrapped KEK
    await putSetting('root', record)
    protection = record
  }
  await openNotebook(passphraseRootKey({ passphrase }), started) // PBKDF2-SHA-256, 600,000 iterations
}

function describeError(error) {
  if (error?.code === 'ERR_ROOT_KEY') {
    if (protection?.kind === 'passphrase') return 'Wrong passphrase: these notes were locked with a different one.'
    // The passkey's messages are written for people and carry no secret: show them as they are.
    return `The passkey could not be used: ${error.message}.`
  }
  if (error?.code === 'ERR_DECRYPT') return 'A note could not be decrypted: it was altered.'
  return `Could not unlock: ${error?.message ?? String(error)}`
}

/** Runs a click or submit action with its button disabled; errors go to the page. */
async function act(button, busy, action) {
  button.disabled = true
  show(busy)
  try {
    await action()
  } catch (error) {
    const created = protection !== undefined
    showLocked()
    show(describeError(error), true)
    // No PRF on this authenticator, before any notebook exists: offer the passphrase instead.
    if (!created && error?.code === 'ERR_ROOT_KEY' && error.message === NO_PRF_MESSAGE) {
      $('error').textContent += ' Protect the notes with a passphrase instead.'
      offerPassphrase()
    }
  } finally {
    button.disabled = false
  }
}

// ------------------------------------------------------------------------------ notes

async function loadNotes() {
  const list = await idb('notes', 'readonly', (s) => s.getAll()) // in key order: oldest first
  return list.filter((n) => typeof n?.at === 'number' && typeof n?.text === 'string')
}

async function render() {
  const notes = await loadNotes()
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
  const by = protection.kind === 'passkey' ? 'a passkey' : 'a passphrase'
  $('count').textContent = `${notes.length} note${notes.length === 1 ? '' : 's'}, encrypted under ${by}`
}

async function addNote(text) {
  const at = Date.now()
  // The timestamp is bound as associated data: a note cannot be moved under another date.
  const encrypted = await chain.encryptText(text, { associatedData: String(at) })
  await idb('notes', 'readwrite', (s) => s.add({ at, text: encrypted }))
  await render()
}

// ------------------------------------------------------------------------------ backup

// A backup is the way back in when the passkey (or the passphrase) is lost: one file, encrypted
// by a key chain of its own under a backup passphrase, its wrapped KEK embedded in the data
// (embeddedStore, the default). It is a snapshot: notes added later are not in it.
const BACKUP_FORMAT = 'browser-notes-backup'
const BACKUP_AAD = `${BACKUP_FORMAT} v1`

async function exportBackup(passphrase) {
  const notes = await Promise.all(
    (await loadNotes()).map(async (n) => ({ at: n.at, text: await chain.decryptText(n.text, { associatedData: String(n.at) }) })),
  )
  const backupChain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), name: BACKUP_FORMAT })
  const data = await backupChain.encryptText(JSON.stringify(notes), { associatedData: BACKUP_AAD })
  const file = new Blob([JSON.stringify({ format: BACKUP_FORMAT, v: 1, data })], { type: 'application/json' })
  const link = document.createElement('a')
  link.href = URL.createObjectURL(file)
  link.download = `notes-backup-${new Date().toISOString().slice(0, 10)}.json`
  link.click()
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000)
  return notes.length
}

/** Decrypts a backup with its passphrase and adds its notes to this notebook, under this notebook's chain. */
async function importBackup(file, passphrase) {
  let backup
  try {
    backup = JSON.parse(await file.text())
  } catch {
    backup = undefined
  }
  if (backup?.format !== BACKUP_FORMAT || backup.v !== 1 || typeof backup.data !== 'string') {
    throw Object.assign(new Error('This file is not a notes backup.'), { shown: true })
  }
  const backupChain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), name: BACKUP_FORMAT })
  let notes
  try {
    notes = JSON.parse(await backupChain.decryptText(backup.data, { associatedData: BACKUP_AAD }))
  } catch (error) {
    if (error?.code === 'ERR_ROOT_KEY') throw Object.assign(new Error('Wrong backup passphrase.'), { shown: true })
    throw error
  }
  const have = new Set((await loadNotes()).map((n) => n.at))
  let added = 0
  for (const n of notes) {
    if (typeof n?.at !== 'number' || typeof n?.text !== 'string' || have.has(n.at)) continue
    const encrypted = await chain.encryptText(n.text, { associatedData: String(n.at) })
    await idb('notes', 'readwrite', (s) => s.add({ at: n.at, text: encrypted }))
    added++
  }
  await render()
  return added
}

async function backupAction(button, busy, action) {
  button.disabled = true
  show(busy)
  try {
    show(await action())
  } catch (error) {
    show(error?.shown ? error.message : `The backup failed: ${error?.message ?? String(error)}.`, true)
  } finally {
    button.disabled = false
  }
}

// ------------------------------------------------------------------------------ events

$('choose-passkey').addEventListener('click', () => act($('choose-passkey'), 'Creating a passkey…', createWithPasskey))
$('choose-passphrase').addEventListener('click', () => {
  show('Choose a passphrase. It cannot be recovered: forgetting it loses the notes.')
  offerPassphrase()
})
$('unlock-passkey').addEventListener('click', () => act($('unlock-passkey'), 'Waiting for the passkey…', unlockWithPasskey))
$('unlock-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const passphrase = $('passphrase').value
  act($('unlock'), protection ? 'Unlocking…' : 'Creating the notebook…', () => unlockWithPassphrase(passphrase))
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

$('export-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const passphrase = $('export-passphrase').value
  $('export-passphrase').value = ''
  backupAction($('export'), 'Encrypting the backup…', async () => {
    const n = await exportBackup(passphrase)
    return `Backup of ${n} note${n === 1 ? '' : 's'} downloaded, encrypted under the backup passphrase.`
  })
})
$('import-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const file = $('import-file').files[0]
  const passphrase = $('import-passphrase').value
  $('import-passphrase').value = ''
  if (!file || !chain) return
  backupAction($('import'), 'Reading the backup…', async () => {
    const n = await importBackup(file, passphrase)
    return `${n} note${n === 1 ? '' : 's'} imported from the backup.`
  })
})

$('lock').addEventListener('click', () => {
  showLocked()
  show('Locked.')
})

protection = await getSetting('root')
showLocked()
globalThis.notesReady = true
