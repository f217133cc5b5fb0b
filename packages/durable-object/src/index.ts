/**
 * Placeholder.
 *
 * @packageDocumentation
 */
export {}
