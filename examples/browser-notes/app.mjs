// Encrypted notes in the browser. The notebook's key chain has several roots: a passkey (WebAuthn
// PRF, @kms-proxy/webauthn) and a recovery passphrase (PBKDF2, @kms-proxy/passphrase), either of
// which opens it; more passkeys (other devices, security keys) can be added and the passphrase
// changed, by re-wrapping the chain's KEKs (no note is encrypted again). A notebook may also have a
// passphrase alone. The chain's wrapped KEKs and head live in IndexedDB (@kms-proxy/indexeddb); the
// app's own records (the passkeys' public parameters, the check text, the notes as `kp1.` text) in
// a second IndexedDB database. Bundle it (see README.md): esbuild resolves the @kms-proxy packages.
import { KeyChain } from '@kms-proxy/core'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { CANCELLED_MESSAGE, KIND as PASSKEY_KIND, NO_PRF_MESSAGE, registerPrfRootKey, webauthnRootKey } from '@kms-proxy/webauthn'

const APP_DB = 'browser-notes' // object stores: settings ('passkeys', 'check'; 'root' from the first version), notes ({ at, text: 'kp1.…' })
const CHECK_TEXT = 'browser-notes v1' // encrypted as 'check': tells a wrong root at unlock, not at the first note
const CHAIN = { store: indexedDbStore({ name: 'browser-notes' }), name: 'notes' }
/**
 * A rotation wraps the new KEK under every root of the chain at once: every passkey (each on its
 * own device) and the passphrase, which no single unlock holds. So the notebook never rotates by
 * age; a rotation by usage is reached after 2^21 notes (the library's limit per KEK), counted in
 * leases of 64, so that each page that writes uses up 64 at most, not the default 32,768.
 */
const CHAIN_OPTIONS = { ...CHAIN, maxKekAgeMs: Infinity, leaseSize: 64 }
const KEYS_DB = 'kms-proxy:browser-notes' // indexedDbStore({ name: 'browser-notes' })'s database; object store 'keys'
/** New passphrases (the notebook's, a backup's) have at least this many characters: both are open to offline guessing. */
const MIN_PASSPHRASE = 12
const RP = { rpName: 'Encrypted notes', userName: 'browser-notes' }

const $ = (id) => document.getElementById(id)
/**
 * The notebook's roots as its chain head lists them: { name, kind: 'passkey' | 'passphrase' | the
 * library's kind, state: 'adding' | 'active' | 'removing' }. Empty on a first run.
 */
let roots = []
/** The active passkeys' public parameters, in the order they were added: { name, label, credentialId, salt }. */
let passkeys = []
/** One root key per passkey, built when the locked page shows, so that a click starts the ceremony at once. */
let passkeyRoots = []
/** On a first run, what the chosen protection is: 'passkey' (with a recovery passphrase) or 'passphrase'. */
let creating
let chain // the unlocked key chain; undefined when locked
/** How many notes are stored (read at load, kept by render): the locked page says what a deletion loses. */
let storedNotes = 0
/** The notes of a backup read on the locked page, added once the new notebook exists; undefined otherwise. */
let pendingNotes

const hasPassphrase = () => roots.some((r) => r.kind === 'passphrase' && r.state === 'active')
const passkeyLabel = (p, i) => p.label || `Passkey ${i + 1}`

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
  // 'strict': a passkey's parameters must be on disk before a KEK is wrapped under it.
  const tx = (await appDb()).transaction(storeName, mode, { durability: mode === 'readwrite' ? 'strict' : 'default' })
  const request = makeRequest(tx.objectStore(storeName))
  await committed(tx)
  return request.result
}
const getSetting = (key) => idb('settings', 'readonly', (s) => s.get(key))
const putSetting = (key, value) => idb('settings', 'readwrite', (s) => s.put(value, key))

/** Clears the app's records (settings and notes) in one transaction. */
async function clearAppRecords() {
  const tx = (await appDb()).transaction(['settings', 'notes'], 'readwrite', { durability: 'strict' })
  tx.objectStore('settings').clear()
  tx.objectStore('notes').clear()
  await committed(tx)
}

/**
 * Deletes the notebook, on the user's confirmed request: first the key chain's records (its head
 * and wrapped KEKs), then the passkeys' parameters, the check text and the notes in one
 * transaction. Without a chain head the page treats the notebook as absent, so a page closed
 * half-way leaves a first run whose new notebook starts by clearing what is left.
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
  await clearAppRecords()
  roots = []
  passkeys = []
  storedNotes = 0
}

/**
 * Reads the notebook's roots from the chain head (the authority: a change made in another tab
 * shows here) and the passkeys' parameters from the settings. A notebook of the first version
 * has one root, named 'default', and its 'root' setting says which kind.
 */
async function loadRoots() {
  const head = await CHAIN.store.getHead(CHAIN.name)
  const legacy = await getSetting('root')
  const saved = (await getSetting('passkeys')) ?? []
  const kindOf = (kind) => (kind === PASSKEY_KIND ? 'passkey' : kind.startsWith('passphrase-') ? 'passphrase' : kind)
  if (!head) roots = []
  else if (head.value.roots) roots = head.value.roots.map((r) => ({ name: r.name, kind: kindOf(r.kind), state: r.state }))
  else roots = legacy ? [{ name: 'default', kind: legacy.kind, state: 'active' }] : []
  const params = new Map(saved.map((p) => [p.name, p]))
  if (legacy?.kind === 'passkey' && !params.has('default')) params.set('default', { name: 'default', label: '', ...legacy.params })
  passkeys = roots.filter((r) => r.kind === 'passkey' && r.state === 'active' && params.has(r.name)).map((r) => params.get(r.name))
}

/** `base`, or `base-2`, `base-3`, … : the first name no root of the chain has. */
function freeName(base) {
  const taken = new Set(roots.map((r) => r.name))
  let name = base
  for (let n = 2; taken.has(name); n++) name = `${base}-${n}`
  return name
}

// ------------------------------------------------------------------------------ page states

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`

/** What protects the notebook, in words: 'a passkey and a recovery passphrase', '2 passkeys', 'a passphrase'. */
function protectionWords() {
  const keys = passkeys.length === 0 ? '' : passkeys.length === 1 ? 'a passkey' : `${passkeys.length} passkeys`
  if (!hasPassphrase()) return keys || 'nothing'
  return keys ? `${keys} and a recovery passphrase` : 'a passphrase'
}

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

/**
 * The passphrase form: unlocking (one field), or on a first run creating a notebook (the
 * passphrase typed twice): a passkey's recovery passphrase, or the notebook's only passphrase.
 */
function passphraseMode() {
  const recovery = creating === 'passkey' || (!creating && passkeys.length > 0)
  $('passphrase').placeholder = creating ? `New ${recovery ? 'recovery ' : ''}passphrase` : recovery ? 'Recovery passphrase' : 'Passphrase'
  $('passphrase').setAttribute('aria-label', $('passphrase').placeholder)
  $('passphrase').autocomplete = creating ? 'new-password' : 'current-password'
  $('passphrase-confirm').hidden = !creating
  $('passphrase-confirm').value = ''
  $('unlock').textContent = creating === 'passkey' ? 'Create passkey and notebook' : creating ? 'Create notebook' : 'Unlock'
  $('passphrase-lead').hidden = !recovery || (!creating && !hasPassphrase()) // a passkey notebook of the first version has no passphrase
  $('passphrase-lead').textContent =
    creating === 'passkey'
      ? `A recovery passphrase opens the notebook too, when the passkey is not at hand (a lost phone, a reset security key). Type it twice, at least ${MIN_PASSPHRASE} characters.`
      : 'Or, without a passkey, the recovery passphrase:'
}

/** Shows the locked page: the first-run choice, or a button per passkey and the passphrase form; and the way back. */
function showLocked() {
  chain = undefined
  creating = undefined
  const exists = roots.length > 0
  // New root keys: the next unlock asks the authenticator again.
  passkeyRoots = passkeys.map((p) => webauthnRootKey({ credentialId: p.credentialId, salt: p.salt }))
  $('passkey-buttons').replaceChildren(
    ...passkeys.map((p, i) => {
      const button = document.createElement('button')
      button.type = 'button'
      button.id = i === 0 ? 'unlock-passkey' : `unlock-passkey-${i + 1}`
      button.textContent = passkeys.length === 1 ? 'Unlock with passkey' : `Unlock with ${passkeyLabel(p, i)}`
      button.addEventListener('click', () => act(button, 'Waiting for the passkey…', () => unlockWithPasskey(i), 'passkey'))
      return button
    }),
  )
  $('passkey-lead').textContent = `This notebook is protected by ${protectionWords()}.`
  $('notes').replaceChildren()
  $('notebook').hidden = true
  for (const id of ['backup', 'keys']) $(id).open = false
  $('import-file').value = ''
  $('setup').hidden = exists
  $('setup-lead').textContent = pendingNotes ? 'How should the new notebook be protected?' : 'How should this notebook be protected?'
  $('passkey-unlock').hidden = passkeys.length === 0
  $('unlock-form').hidden = !hasPassphrase()
  $('passphrase').value = ''
  passphraseMode()
  showRecover()
}

/**
 * The way back on the locked page. For an existing notebook: restore a backup or start anew, both
 * after a confirmation that this notebook will be deleted. On a first run: restore a backup.
 * Hidden while a restored backup waits for the new notebook's protection.
 */
function showRecover() {
  const exists = roots.length > 0
  $('recover').hidden = pendingNotes !== undefined
  $('recover').open = false
  $('recover-delete').hidden = !exists
  $('start-over-block').hidden = !exists
  $('recover-confirm').checked = false
  if (exists) {
    const [summary, lost, later] =
      passkeys.length === 0
        ? ['Forgot the passphrase?', 'the passphrase', 'even if the passphrase comes back to you']
        : !hasPassphrase()
          ? ['Lost the passkey?', 'the passkey', 'even if the passkey turns up later']
          : ['Lost the passkey and the passphrase?', 'a passkey or the recovery passphrase', 'even if a passkey or the passphrase turns up later']
    $('recover-summary').textContent = summary
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
  const allowed = roots.length === 0 || $('recover-confirm').checked
  $('restore').disabled = !allowed
  $('start-over').disabled = !allowed
}

/** First run: the passphrase form for a new notebook, `kind` 'passkey' (its recovery passphrase) or 'passphrase'. */
function offerCreate(kind) {
  creating = kind
  $('unlock-form').hidden = false
  passphraseMode()
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

/**
 * Opens the chain with the roots held (by name), checks (or writes) the check text, finishes a
 * root change a closed page left half-done, adds a restored backup's notes, shows the notes.
 * `how`: 'passkey' or 'passphrase', what unlocked it.
 */
async function openNotebook(held, how, started) {
  const opened = await KeyChain.open({ roots: held, ...CHAIN_OPTIONS }) // no root-key call: that happens at the check
  const check = await getSetting('check')
  if (check) {
    if ((await opened.decryptText(check)) !== CHECK_TEXT) throw new Error('the check note does not match')
  } else {
    await putSetting('check', await opened.encryptText(CHECK_TEXT))
  }
  chain = opened
  await settleRoots()
  const ms = Math.round(performance.now() - started)
  let restored = ''
  if (pendingNotes) {
    restored = `, with the ${plural(await addNotes(pendingNotes), 'note')} of the backup`
    pendingNotes = undefined
  }
  await render()
  for (const id of ['setup', 'passkey-unlock', 'unlock-form', 'passphrase-lead', 'recover']) $(id).hidden = true
  $('notebook').hidden = false
  const recovery = passkeys.length > 0 && hasPassphrase()
  const by = how === 'passkey' ? 'with the passkey' : recovery ? 'with the recovery passphrase' : 'with the passphrase'
  const keep = recovery
    ? 'Keep the recovery passphrase: it opens the notebook when the passkey is not at hand, and it cannot be recovered itself.'
    : hasPassphrase()
      ? 'Keep the passphrase: it cannot be recovered. A backup (under Backup) is the way back if it is lost.'
      : 'Without this passkey the notes cannot be read. A backup (under Backup) is the way back if it is lost.'
  if (check) say({ status: `Unlocked ${by} in ${ms} ms.` })
  else say({ status: `New notebook created in ${ms} ms${restored}.`, warning: keep })
  $('note').focus()
}

/**
 * A root change that a closed page left half-done (a root still 'adding' or 'removing' in the
 * head) is settled at the next unlock: a root being removed is removed (the new one is already
 * active), a root being added is dropped (its change never took effect: the old root still opens
 * the notebook). Either way no KEK loses its last wrap (the library checks).
 */
async function settleRoots() {
  await loadRoots()
  const unfinished = roots.filter((r) => r.state !== 'active')
  for (const r of unfinished) await chain.removeRoot(r.name)
  if (unfinished.length > 0) await loadRoots()
}

async function unlockWithPasskey(i) {
  const started = performance.now()
  const root = passkeyRoots[i]
  // First thing in the click handler: the ceremony runs with the click's user activation.
  await root.unlock()
  await openNotebook({ [passkeys[i].name]: root }, 'passkey', started)
}

async function unlockWithPassphrase(passphrase) {
  const started = performance.now()
  // Every passphrase root the head lists: after a change that a closed page left half-done, the
  // old passphrase and the new one both open the notebook until the next unlock settles it.
  const held = Object.fromEntries(roots.filter((r) => r.kind === 'passphrase').map((r) => [r.name, passphraseRootKey({ passphrase })]))
  await openNotebook(held, 'passphrase', started)
}

/** A first run: the app's records start empty (a deletion a closed page left half-done leaves some), then the passkeys' parameters. */
async function startNotebook(saved) {
  await clearAppRecords()
  // The passkeys' public parameters are stored (durably) before any KEK is wrapped under them.
  await putSetting('passkeys', saved)
  passkeys = saved
  roots = [...saved.map((p) => ({ name: p.name, kind: 'passkey', state: 'active' })), { name: 'passphrase', kind: 'passphrase', state: 'active' }]
}

async function createWithPasskey(passphrase) {
  const started = performance.now()
  // One prompt where the authenticator evaluates the PRF at creation (the root is then already
  // unlocked); otherwise unlock() below asks once more.
  const { credential, rootKey } = await registerPrfRootKey(RP)
  await startNotebook([{ name: 'passkey', label: '', ...credential }])
  await rootKey.unlock()
  // Both roots from the start: the first KEK is wrapped under the passkey and under the passphrase.
  await openNotebook({ passkey: rootKey, passphrase: passphraseRootKey({ passphrase }) }, 'passkey', started)
}

async function createWithPassphrase(passphrase) {
  const started = performance.now()
  await startNotebook([])
  await openNotebook({ passphrase: passphraseRootKey({ passphrase }) }, 'passphrase', started) // PBKDF2-SHA-256, 600,000 iterations
}

/** The library's passkey messages in plain words; the exact message goes under "Technical details". */
const PASSKEY_WORDS = {
  [NO_PRF_MESSAGE]: 'This passkey cannot protect notes: this device or security key lacks the feature it needs.',
  [CANCELLED_MESSAGE]:
    'The passkey was not used: the request was cancelled or timed out, or this device does not have the passkey of this notebook. Try again, or open the notebook where its passkey is.',
}

const technicalOf = (error) => (error?.code ? `${error.code}: ${error.message}` : String(error?.message ?? error))

/**
 * An error in plain words for the page ({ error, technical }); errors carry no secret, so their
 * message may be shown. `how`: what was used, 'passkey' or 'passphrase'.
 */
function describeError(error, how) {
  const technical = technicalOf(error)
  if (error?.code === 'ERR_ROOT_KEY') {
    if (how === 'passphrase') return { error: 'Wrong passphrase: these notes were locked with a different one.', technical }
    // Any other refusal of a ceremony that succeeded: the passkey's key does not unwrap this notebook's.
    const words = PASSKEY_WORDS[error.message] ?? 'This passkey does not open this notebook: it is not the passkey the notebook was created with.'
    return { error: words, technical }
  }
  if (error?.code === 'ERR_DECRYPT') return { error: 'A note could not be decrypted: it was altered.', technical }
  return { error: 'The notebook could not be opened.', technical }
}

/** Runs an unlock or a creation with its button disabled; errors go to the page. `how`: 'passkey' or 'passphrase'. */
async function act(button, busy, action, how) {
  button.disabled = true
  say({ status: busy })
  const wasCreating = creating
  const typed = [$('passphrase').value, $('passphrase-confirm').value]
  try {
    await action()
  } catch (error) {
    // A creation that failed stored nothing but the passkeys' parameters, with no chain head: still a first run.
    if (wasCreating) [roots, passkeys] = [[], []]
    showLocked()
    const shown = describeError(error, how)
    if (wasCreating) {
      // No PRF on this authenticator: the same passphrase, alone, protects the notebook instead.
      const noPrf = error?.code === 'ERR_ROOT_KEY' && error.message === NO_PRF_MESSAGE
      say(noPrf ? { ...shown, error: `${shown.error} Protect the notes with the passphrase alone instead.` } : shown)
      offerCreate(noPrf ? 'passphrase' : wasCreating)
      ;[$('passphrase').value, $('passphrase-confirm').value] = typed
    } else {
      say(shown)
      if (how === 'passphrase') {
        $('passphrase').value = typed[0]
        focusField('passphrase')
      }
    }
  } finally {
    button.disabled = false
  }
}

// ------------------------------------------------------------------------------ passkeys and passphrase

/** The unlocked notebook's roots, listed, and the two actions named for what they will do. */
function renderKeys() {
  const items = passkeys.map((p, i) => passkeyLabel(p, i))
  if (hasPassphrase()) items.push(passkeys.length > 0 ? 'Recovery passphrase' : 'Passphrase')
  $('key-list').replaceChildren(
    ...items.map((text) => {
      const li = document.createElement('li')
      li.textContent = text
      return li
    }),
  )
  $('change-passphrase').textContent = hasPassphrase() ? 'Change passphrase' : 'Add a recovery passphrase'
  $('add-passkey').textContent = passkeys.length > 0 ? 'Add another passkey' : 'Add a passkey'
}

/** What a root change did, in words: how many keys were wrapped again, and that no note was. */
const changeWords = (report) => `${plural(report.wrapped, 'key')} wrapped again, no note re-encrypted`

/**
 * A new passphrase in place of the old (changeRoot: the chain's KEKs are wrapped under the new
 * one, then the old one's wraps are deleted), or a first one next to the passkeys (addRoot). The
 * old passphrase is not asked for: the session is unlocked, and the one who forgot it but has the
 * passkey is the user this is for.
 */
async function changePassphrase(passphrase) {
  const started = performance.now()
  const root = passphraseRootKey({ passphrase })
  const from = roots.find((r) => r.kind === 'passphrase' && r.state === 'active')?.name
  const report = from ? await chain.changeRoot(root, { from, name: freeName('passphrase') }) : await chain.addRoot(freeName('passphrase'), root)
  await loadRoots()
  const ms = Math.round(performance.now() - started)
  return from
    ? `Passphrase changed in ${ms} ms: ${changeWords(report)}. The old passphrase no longer opens this notebook.`
    : `Recovery passphrase added in ${ms} ms: ${changeWords(report)}.`
}

/**
 * Another passkey (another device, a security key): a new credential, its parameters stored, then
 * addRoot wraps the chain's KEKs under it. One prompt where the PRF is evaluated at creation.
 */
async function addPasskey(label) {
  const started = performance.now()
  const { credential, rootKey } = await registerPrfRootKey(RP)
  const name = freeName('passkey')
  // Stored before any KEK is wrapped under it; a change that does not finish is dropped at the next unlock.
  await putSetting('passkeys', [...passkeys, { name, label, ...credential }])
  await rootKey.unlock()
  const report = await chain.addRoot(name, rootKey)
  await loadRoots()
  const ms = Math.round(performance.now() - started)
  return `Passkey added in ${ms} ms: ${changeWords(report)}. It opens this notebook from now on.`
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
  $('count').textContent = `${plural(notes.length, 'note')}, encrypted under ${protectionWords()}`
  renderKeys()
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

/**
 * Runs a backup, recovery or key action with its button disabled; errors go to the page, the field
 * to fix focused. `failed`: the plain words for an error the action did not word itself.
 */
async function panelAction(button, busy, action, { enable = () => (button.disabled = false), failed = 'The backup could not be used.' } = {}) {
  button.disabled = true
  say({ status: busy })
  try {
    say({ status: await action() })
  } catch (error) {
    if (error?.shown) say({ error: error.message })
    else say({ error: (error?.code === 'ERR_ROOT_KEY' && PASSKEY_WORDS[error.message]) || failed, technical: technicalOf(error) })
    if (error?.field) focusField(error.field)
  } finally {
    enable()
  }
}

// ------------------------------------------------------------------------------ events

$('choose-passkey').addEventListener('click', () => {
  say({ status: `Choose a recovery passphrase of at least ${MIN_PASSPHRASE} characters and type it twice; then the passkey is made.` })
  offerCreate('passkey')
})
$('choose-passphrase').addEventListener('click', () => {
  say({
    status: `Choose a passphrase of at least ${MIN_PASSPHRASE} characters and type it twice.`,
    warning: 'A passphrase cannot be recovered: forgetting it loses the notes, unless a backup was exported.',
  })
  offerCreate('passphrase')
})
$('unlock-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const kind = creating
  if (kind && !newPassphraseOk('passphrase', 'passphrase-confirm')) return
  const passphrase = $('passphrase').value
  if (kind === 'passkey') act($('unlock'), 'Creating a passkey…', () => createWithPasskey(passphrase), 'passkey')
  else if (kind === 'passphrase') act($('unlock'), 'Creating the notebook…', () => createWithPassphrase(passphrase), 'passphrase')
  else act($('unlock'), 'Unlocking…', () => unlockWithPassphrase(passphrase), 'passphrase')
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
    say({ error: 'The note could not be saved.', technical: technicalOf(error) })
  }
})

$('change-form').addEventListener('submit', (event) => {
  event.preventDefault()
  if (!chain || !newPassphraseOk('new-passphrase', 'new-passphrase-confirm')) return
  const passphrase = $('new-passphrase').value
  $('new-passphrase').value = $('new-passphrase-confirm').value = ''
  panelAction($('change-passphrase'), 'Wrapping the keys under the new passphrase…', async () => {
    const done = await changePassphrase(passphrase)
    await render()
    return done
  }, { failed: 'The passphrase could not be changed.' })
})
$('add-passkey-form').addEventListener('submit', (event) => {
  event.preventDefault()
  if (!chain) return
  const label = $('passkey-label').value.trim()
  panelAction($('add-passkey'), 'Waiting for the new passkey…', async () => {
    const done = await addPasskey(label)
    $('passkey-label').value = ''
    await render()
    return done
  }, { failed: 'The passkey could not be added.' })
})

$('export-form').addEventListener('submit', (event) => {
  event.preventDefault()
  if (!newPassphraseOk('export-passphrase', 'export-confirm')) return
  const passphrase = $('export-passphrase').value
  $('export-passphrase').value = $('export-confirm').value = ''
  panelAction($('export'), 'Encrypting the backup…', async () => {
    const n = await exportBackup(passphrase)
    return `Backup of ${plural(n, 'note')} downloaded, encrypted under the backup passphrase.`
  })
})
$('import-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const file = $('import-file').files[0]
  const passphrase = $('import-passphrase').value
  if (!file || !chain) return
  panelAction($('import'), 'Reading the backup…', async () => {
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
  if (!file || (roots.length > 0 && !$('recover-confirm').checked)) return
  panelAction(
    $('restore'),
    'Reading the backup…',
    async () => {
      // Read first: a wrong file or passphrase deletes nothing.
      const notes = await readBackup(file, passphrase, 'restore-passphrase')
      if (roots.length > 0) await eraseNotebook()
      pendingNotes = notes
      $('restore-passphrase').value = ''
      $('restore-file').value = ''
      showLocked()
      return `The backup holds ${plural(notes.length, 'note')}. Choose how the new notebook is protected.`
    },
    { enable: enableRecover },
  )
})
$('start-over').addEventListener('click', () => {
  if (roots.length > 0 && !$('recover-confirm').checked) return
  panelAction(
    $('start-over'),
    'Deleting the old notebook…',
    async () => {
      await eraseNotebook()
      pendingNotes = undefined
      showLocked()
      return 'The old notebook was deleted. Choose how the new notebook is protected.'
    },
    { enable: enableRecover },
  )
})

$('lock').addEventListener('click', () => {
  showLocked()
  say({ status: 'Locked.' })
})

await loadRoots()
storedNotes = roots.length > 0 ? (await loadNotes()).length : 0
showLocked()
globalThis.notesReady = true
