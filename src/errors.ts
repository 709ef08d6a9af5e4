/**
 * Errors a user can cause (bad input, ENOSPC, a missing adapter, a lost device) are HmmlabErrors:
 * an errno-like code and a message that names what was wrong. The CLI prints them in one line and
 * exits with the status src/cli/exit.ts gives the code; anything else is a bug (EINTERNAL), whose
 * stack the CLI shows only under HMMLAB_DEBUG=1.
 */
export type Errno =
  | 'EINVAL' // bad argument: negative/non-integer offset, misaligned direct I/O, bad option
  | 'ENOSPC' // block budget exhausted (write, page_mkwrite)
  | 'ENOMEM' // out of device memory (GPU memory exhausted while allocating frames)
  | 'EFBIG' // past the file-size limit
  | 'EBADF' // closed file
  | 'ENOENT' // no such file
  | 'EROFS' // read-only filesystem or mapping
  | 'EFAULT' // a device access that page_mkwrite refused (SIGBUS-like)
  | 'EIO' // data lost: device lost while holding dirty pages, backing-file I/O error
  | 'ENODEV' // no WebGPU adapter, or the named adapter does not exist
  | 'ELIMIT' // a request over the adapter's limits
  | 'ESHADER' // WGSL compile error
  | 'EGPU' // GPU validation/out-of-memory error, device lost
  | 'ETIMEDOUT' // a wait on the GPU that did not finish in time
  | 'EOPLOG' // malformed op log
  | 'EUSAGE' // the command line: an unknown option or command, a missing argument
  | 'EEXIST' // a file hmmlab would replace exists (--overwrite replaces it)
  | 'ENOTDIR' // a directory argument names something else
  | 'EISDIR' // a file argument names a directory
  | 'EACCES' // a file or directory that cannot be written
  | 'EEXPECT' // an op of a log with "expect" did not fail as it said
  | 'EINTERNAL'; // a bug in hmmlab: an exception nobody expected

export class HmmlabError extends Error {
  readonly code: Errno;
  /** The file pages the error is about, as data (refused by page_mkwrite, lost with a device). */
  readonly pages?: readonly number[];
  constructor(code: Errno, message: string, options?: { cause?: unknown; pages?: readonly number[] }) {
    super(message, options);
    this.name = 'HmmlabError';
    this.code = code;
    if (options?.pages) this.pages = options.pages;
  }
}

/** The pages an error names as data, looked up along its `cause` chain (wrappers add the line). */
export function errorPages(e: unknown): readonly number[] | undefined {
  for (let depth = 0; e && typeof e === 'object' && depth < 8; depth++) {
    if (e instanceof HmmlabError && e.pages) return e.pages;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

export function isHmmlabError(e: unknown): e is HmmlabError {
  return e instanceof HmmlabError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
