// Errors for HL7v2 input that cannot be parsed at all. Codes are safe to log.

export const Hl7ParseErrorCode = {
  Empty: 'empty',
  NoMsh: 'no_msh',
  BadDelimiters: 'bad_delimiters',
  UnknownCharset: 'unknown_charset',
  BadEncoding: 'bad_encoding',
} as const;
export type Hl7ParseErrorCode = (typeof Hl7ParseErrorCode)[keyof typeof Hl7ParseErrorCode];

/** The message cannot be parsed at all. `code` is safe to log; `message` names the problem. */
export class Hl7ParseError extends Error {
  readonly code: Hl7ParseErrorCode;

  constructor(code: Hl7ParseErrorCode, message: string) {
    super(message);
    this.name = 'Hl7ParseError';
    this.code = code;
  }
}
