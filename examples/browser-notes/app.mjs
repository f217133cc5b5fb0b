// Encrypted notes in the browser. On first run the user picks the notebook's root key: a passkey
// (WebAuthn PRF, @kms-proxy/webauthn) or a passphrase (PBKDF2, @kms-proxy/passphrase). The key
// chain's wrapped KEKs live in IndexedDB (@kms-proxy/indexeddb); the app's own records (which
// root, its public parameters, the check text, the notes as `kp1.` text) in a second IndexedDB
// database. Bundle it (see README.md): esbuild resolves the @kms-proxy packages.
import { KeyChain } from '@kms-proxy/core'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { CANCELLED_MESSAGE, NO_PRF_MESSAGE, registerPrfRootKey, webauthnRootKey } from '@kms-proxy/webauthn'

const APP_DB = 'browser-notes' // object stores: settings ('root', 'check'), notes ({ at, text: 'kp1.…' })
const CHECK_TEXT = 'browser-notes v1' // encrypted as 'check': tells a wrong root at unlock, not at the first note
const CHAIN = { store: indexedDbStore({ name: 'browser-notes' }), name: 'notes' }
const KEYS_DB = 'kms-proxy:browser-notes' // indexedDbStore({ name: 'browser-notes' })'s database; object store 'keys'
/** New passphrases (the notebook's, a backup's) have at least this many characters: both are open to offline guessing. */
const MIN_PASSPHRASE = 12

const $ = (id) => document.getElementById(id)
/** The 'root' record: { kind: 'passkey', params: { credentialId, salt } } or { kind: 'passphrase' }; undefined on first run. */
let protection
/** Built from the stored parameters when the page loads, so that a click starts the ceremony at once. */
let passkeyRoot
let chain // the unlocked key chain; undefined when locked
/** How many notes are stored (read at load, kept by render): the locked page says what a deletion loses. */
let storedNotes = 0
/** The notes of a backup read on the locked page, added once the new notebook exists; undefined otherwise. */
let pendingNotes

// ------------------------------------------------------------------------------ IndexedDB

/** Opens (and on first use creates, through `upgrade`) the database `name`. */
function openDb(name, upgrade) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(name)
    request.onupgradeneeded = () => upgrade(request.result)
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
}

/** Resolves once `tx` has committed. */
function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve()
    tx.onabort = tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'))
  })
}

let opening
function appDb() {
  opening ??= openDb(APP_DB, (db) => {
    db.createObjectStore('settings')
    db.createObjectStore('notes', { autoIncrement: true })
  })
  return opening
}

/** One request in its own transaction; resolves with its result once the transaction completed. */
async function idb(storeName, mode, makeRequest) {
  // 'strict': the root's parameters must be on disk before a KEK is wrapped under them.
  const tx = (await appDb()).transaction(storeName, mode, { durability: mode === 'readwrite' ? 'strict' : 'default' })
  const request = makeRequest(tx.objectStore(storeName))
  await committed(tx)
  return request.result
}
const getSetting = (key) => idb('settings', 'readonly', (s) => s.get(key))
const putSetting = (key, value) => idb('settings', 'readwrite', (s) => s.put(value, key))

/**
 * Deletes the notebook, on the user's confirmed request: first the key chain's records (its head
 * and wrapped KEKs), then the root's parameters, the check text and the notes in one transaction.
 * In that order a page closed half-way leaves a notebook that cannot be unlocked and offers this
 * again; the other order could leave no root record next to the old chain head, and a new root
 * would then meet a KEK it cannot unwrap.
 */
async function eraseNotebook() {
  // The same database and object store as indexedDbStore's (created the same way if missing).
  const keys = await openDb(KEYS_DB, (db) => db.createObjectStore('keys'))
  try {
    const tx = keys.transaction('keys', 'readwrite', { durability: 'strict' })
    tx.objectStore('keys').clear()
    await committed(tx)
  } finally {
    keys.close()
  }
  const tx = (await appDb()).transaction(['settings', 'notes'], 'readwrite', { durability: 'strict' })
  tx.objectStore('settings').clear()
  tx.objectStore('notes').clear()
  await committed(tx)
  protection = undefined
  storedNotes = 0
}

// ------------------------------------------------------------------------------ page states

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`

/**
 * Shows a status (success, green), a warning (amber) and an error (red); each one not given is
 * cleared. `technical` is the library's exact message, kept under "Technical details" for whoever
 * reports a problem, while the error itself is in plain words.
 */
function say({ status = '', warning = '', error = '', technical = '' } = {}) {
  $('status').textContent = status
  $('warning').textContent = warning
  $('warning').hidden = !warning
  $('error-text').textContent = error
  $('error').hidden = !error
  $('error-technical').textContent = technical
  $('error-details').hidden = !technical
  $('error-details').open = false
}

/** Focuses a field with its text selected, so that typing again replaces it. */
function focusField(id) {
  $(id).focus()
  $(id).select()
}

/** The passphrase form: unlocking (one field) or creating a notebook (the passphrase typed twice). */
function passphraseMode(creating) {
  $('passphrase').placeholder = creating ? 'New passphrase' : 'Passphrase'
  $('passphrase').autocomplete = creating ? 'new-password' : 'current-password'
  $('passphrase-confirm').hidden = !creating
  $('passphrase-confirm').value = ''
  $('unlock').textContent = creating ? 'Create notebook' : 'Unlock'
}

/** Shows the locked page for the stored protection: the first-run choice, a passkey button or a passphrase form, and the way back. */
function showLocked() {
  chain = undefined
  passkeyRoot = protection?.kind === 'passkey' ? webauthnRootKey(protection.params) : undefined // a new root: the next unlock asks the authenticator again
  $('notes').replaceChildren()
  $('notebook').hidden = true
  $('backup').open = false
  $('import-file').value = ''
  $('setup').hidden = protection !== undefined
  $('setup-lead').textContent = pendingNotes ? 'How should the new notebook be protected?' : 'How should this notebook be protected? You choose once.'
  $('passkey-unlock').hidden = protection?.kind !== 'passkey'
  $('unlock-form').hidden = protection?.kind !== 'passphrase'
  $('passphrase').value = ''
  passphraseMode(false)
  showRecover()
}

/**
 * The way back on the locked page. For an existing notebook: restore a backup or start anew, both
 * after a confirmation that this notebook will be deleted. On a first run: restore a backup.
 * Hidden while a restored backup waits for the new notebook's protection.
 */
function showRecover() {
  const exists = protection !== undefined
  $('recover').hidden = pendingNotes !== undefined
  $('recover').open = false
  $('recover-delete').hidden = !exists
  $('start-over-block').hidden = !exists
  $('recover-confirm').checked = false
  if (exists) {
    const lost = protection.kind === 'passkey' ? 'the passkey' : 'the passphrase'
    const later = protection.kind === 'passkey' ? 'even if the passkey turns up later' : 'even if the passphrase comes back to you'
    $('recover-summary').textContent = protection.kind === 'passkey' ? 'Lost the passkey?' : 'Forgot the passphrase?'
    $('recover-warning').textContent =
      `Without ${lost} this notebook cannot be opened. Restoring a backup or starting a new notebook deletes it from this browser: ` +
      `its ${plural(storedNotes, 'note')} can no longer be read, ${later}. Notes added after the backup was made are lost.`
    $('recover-confirm-label').textContent = `Delete this notebook and its ${plural(storedNotes, 'note')}`
  } else {
    $('recover-summary').textContent = 'Restore a backup'
  }
  enableRecover()
}

/** Restoring and starting anew wait for the confirmation when there is a notebook to delete. */
function enableRecover() {
  const allowed = protection === undefined || $('recover-confirm').checked
  $('restore').disabled = !allowed
  $('start-over').disabled = !allowed
}

/** First run, passphrase chosen (or offered because the authenticator has no PRF). */
function offerPassphrase() {
  $('unlock-form').hidden = false
  passphraseMode(true)
  $('passphrase').focus()
}

/** A new passphrase typed twice (`field`, `confirmField`): too short or two that differ are refused, and the field to fix focused. */
function newPassphraseOk(field, confirmField) {
  const refuse = (error, id) => (say({ error }), focusField(id), false)
  const value = $(field).value
  if ([...value].length < MIN_PASSPHRASE) {
    return refuse(`This passphrase is too short: use at least ${MIN_PASSPHRASE} characters (a few words you will remember).`, field)
  }
  if ($(confirmField).value !== value) return refuse('The two passphrases differ: type the same one twice.', confirmField)
  return true
}

// ------------------------------------------------------------------------------ unlock

/** Opens the chain under `rootKey`, checks (or writes) the check text, adds a restored backup's notes, shows the notes. */
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
  let restored = ''
  if (pendingNotes) {
    restored = `, with the ${plural(await addNotes(pendingNotes), 'note')} of the backup`
    pendingNotes = undefined
  }
  await render()
  for (const id of ['setup', 'passkey-unlock', 'unlock-form', 'recover']) $(id).hidden = true
  $('notebook').hidden = false
  const how = protection.kind === 'passkey' ? 'with the passkey' : 'with the passphrase'
  const keep =
    (protection.kind === 'passkey' ? 'Without this passkey the notes cannot be read.' : 'Keep the passphrase: it cannot be recovered.') +
    ' A backup (under Backup) is the way back if it is lost.'
  if (check) say({ status: `Unlocked ${how} in ${ms} ms.` })
  else say({ status: `New notebook created in ${ms} ms${restored}.`, warning: keep })
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

/** The library's passkey messages in plain words; the exact message goes under "Technical details". */
const PASSKEY_WORDS = {
  [NO_PRF_MESSAGE]: 'This passkey cannot protect notes: this device or security key lacks the feature it needs.',
  [CANCELLED_MESSAGE]:
    'The passkey was not used: the request was cancelled or timed out, or this device does not have the passkey of this notebook. Try again, or open the notebook where its passkey is.',
}

/** An error in plain words for the page ({ error, technical }); errors carry no secret, so their message may be shown. */
function describeError(error) {
  const technical = error?.code ? `${error.code}: ${error.message}` : String(error?.message ?? error)
  if (error?.code === 'ERR_ROOT_KEY') {
    if (protection?.kind === 'passphrase') return { error: 'Wrong passphrase: these notes were locked with a different one.', technical }
    // Any other refusal of a ceremony that succeeded: the passkey's key does not unwrap this notebook's.
    const words = PASSKEY_WORDS[error.message] ?? 'This passkey does not open this notebook: it is not the passkey the notebook was created with.'
    return { error: words, technical }
  }
  if (error?.code === 'ERR_DECRYPT') return { error: 'A note could not be decrypted: it was altered.', technical }
  return { error: 'The notebook could not be opened.', technical }
}

/** Runs a click or submit action with its button disabled; errors go to the page. */
async function act(button, busy, action) {
  button.disabled = true
  say({ status: busy })
  try {
    await action()
  } catch (error) {
    const created = protection !== undefined
    const typed = $('passphrase').value
    showLocked()
    const shown = describeError(error)
    // No PRF on this authenticator, before any notebook exists: offer the passphrase instead.
    if (!created && error?.code === 'ERR_ROOT_KEY' && error.message === NO_PRF_MESSAGE) {
      say({ ...shown, error: `${shown.error} Protect the notes with a passphrase instead.` })
      offerPassphrase()
    } else {
      say(shown)
      if (protection?.kind === 'passphrase') {
        $('passphrase').value = typed
        focusField('passphrase')
      }
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
  storedNotes = notes.length
  const by = protection.kind === 'passkey' ? 'a passkey' : 'a passphrase'
  $('count').textContent = `${plural(notes.length, 'note')}, encrypted under ${by}`
}

async function addNote(text) {
  const at = Date.now()
  // The timestamp is bound as associated data: a note cannot be moved under another date.
  const encrypted = await chain.encryptText(text, { associatedData: String(at) })
  await idb('notes', 'readwrite', (s) => s.add({ at, text: encrypted }))
  await render()
}

/** Adds notes ({ at, text }) under this notebook's chain, skipping a timestamp it already holds; returns how many it added. */
async function addNotes(notes) {
  const have = new Set((await loadNotes()).map((n) => n.at))
  let added = 0
  for (const n of notes) {
    if (typeof n?.at !== 'number' || typeof n?.text !== 'string' || have.has(n.at)) continue
    const encrypted = await chain.encryptText(n.text, { associatedData: String(n.at) })
    await idb('notes', 'readwrite', (s) => s.add({ at: n.at, text: encrypted }))
    have.add(n.at)
    added++
  }
  return added
}

// ------------------------------------------------------------------------------ backup

// A backup is the way back in when the passkey (or the passphrase) is lost: one file, encrypted
// by a key chain of its own under a backup passphrase, its wrapped KEK embedded in the data
// (embeddedStore, the default). It is a snapshot: notes added later are not in it.
const BACKUP_FORMAT = 'browser-notes-backup'
const BACKUP_AAD = `${BACKUP_FORMAT} v1`

/** An error whose message is written for the page; `field` is the field to fix. */
const shownError = (message, field) => Object.assign(new Error(message), { shown: true, field })

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

/** The notes of a backup file, decrypted with its passphrase (typed in `field`). */
async function readBackup(file, passphrase, field) {
  let backup
  try {
    backup = JSON.parse(await file.text())
  } catch {
    backup = undefined
  }
  if (backup?.format !== BACKUP_FORMAT || backup.v !== 1 || typeof backup.data !== 'string') throw shownError('This file is not a notes backup.')
  const backupChain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), name: BACKUP_FORMAT })
  try {
    const notes = JSON.parse(await backupChain.decryptText(backup.data, { associatedData: BACKUP_AAD }))
    if (!Array.isArray(notes)) throw shownError('This file is not a notes backup.')
    return notes
  } catch (error) {
    if (error?.code === 'ERR_ROOT_KEY') throw shownError('Wrong backup passphrase.', field)
    throw error
  }
}

/** Runs a backup or recovery action with its button disabled; errors go to the page, the field to fix focused. */
async function backupAction(button, busy, action, enable = () => (button.disabled = false)) {
  button.disabled = true
  say({ status: busy })
  try {
    say({ status: await action() })
  } catch (error) {
    if (error?.shown) say({ error: error.message })
    else say({ error: 'The backup could not be used.', technical: error?.code ? `${error.code}: ${error.message}` : String(error?.message ?? error) })
    if (error?.field) focusField(error.field)
  } finally {
    enable()
  }
}

// ------------------------------------------------------------------------------ events

$('choose-passkey').addEventListener('click', () => act($('choose-passkey'), 'Creating a passkey…', createWithPasskey))
$('choose-passphrase').addEventListener('click', () => {
  say({
    status: `Choose a passphrase of at least ${MIN_PASSPHRASE} characters and type it twice.`,
    warning: 'A passphrase cannot be recovered: forgetting it loses the notes, unless a backup was exported.',
  })
  offerPassphrase()
})
$('unlock-passkey').addEventListener('click', () => act($('unlock-passkey'), 'Waiting for the passkey…', unlockWithPasskey))
$('unlock-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const creating = protection === undefined
  if (creating && !newPassphraseOk('passphrase', 'passphrase-confirm')) return
  const passphrase = $('passphrase').value
  act($('unlock'), creating ? 'Creating the notebook…' : 'Unlocking…', () => unlockWithPassphrase(passphrase))
})

$('add-form').addEventListener('submit', async (event) => {
  event.preventDefault()
  const text = $('note').value.trim()
  if (!text || !chain) return
  try {
    await addNote(text)
    $('note').value = ''
    say({ status: 'Saved.' })
  } catch (error) {
    say(describeError(error))
  }
})

$('export-form').addEventListener('submit', (event) => {
  event.preventDefault()
  if (!newPassphraseOk('export-passphrase', 'export-confirm')) return
  const passphrase = $('export-passphrase').value
  $('export-passphrase').value = $('export-confirm').value = ''
  backupAction($('export'), 'Encrypting the backup…', async () => {
    const n = await exportBackup(passphrase)
    return `Backup of ${plural(n, 'note')} downloaded, encrypted under the backup passphrase.`
  })
})
$('import-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const file = $('import-file').files[0]
  const passphrase = $('import-passphrase').value
  if (!file || !chain) return
  backupAction($('import'), 'Reading the backup…', async () => {
    const n = await addNotes(await readBackup(file, passphrase, 'import-passphrase'))
    $('import-passphrase').value = ''
    await render()
    return `${plural(n, 'note')} imported from the backup.`
  })
})

$('recover-confirm').addEventListener('change', enableRecover)
$('restore-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const file = $('restore-file').files[0]
  const passphrase = $('restore-passphrase').value
  if (!file || (protection && !$('recover-confirm').checked)) return
  backupAction(
    $('restore'),
    'Reading the backup…',
    async () => {
      // Read first: a wrong file or passphrase deletes nothing.
      const notes = await readBackup(file, passphrase, 'restore-passphrase')
      if (protection) await eraseNotebook()
      pendingNotes = notes
      $('restore-passphrase').value = ''
      $('restore-file').value = ''
      showLocked()
      return `The backup holds ${plural(notes.length, 'note')}. Choose how the new notebook is protected.`
    },
    enableRecover,
  )
})
$('start-over').addEventListener('click', () => {
  if (protection && !$('recover-confirm').checked) return
  backupAction(
    $('start-over'),
    'Deleting the old notebook…',
    async () => {
      await eraseNotebook()
      pendingNotes = undefined
      showLocked()
      return 'The old notebook was deleted. Choose how the new notebook is protected.'
    },
    enableRecover,
  )
})

$('lock').addEventListener('click', () => {
  showLocked()
  say({ status: 'Locked.' })
})

protection = await getSetting('root')
storedNotes = (await loadNotes()).length
showLocked()
globalThis.notesReady = true
