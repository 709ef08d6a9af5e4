/**
 * The op-log parser: every rule of docs/oplog.md rejects its line with HmmlabError('EOPLOG') whose
 * message names the 1-based line number and the reason; valid logs round-trip through the serializer.
 */
import { describe, expect, test } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { generateOplog } from '../../src/oplog/generate.ts';
import { parseOplog, validateOplog } from '../../src/oplog/parse.ts';
import { type Op, serializeOplog } from '../../src/oplog/schema.ts';

function parseError(text: string): HmmlabError {
  try {
    parseOplog(text);
  } catch (e) {
    expect(e).toBeInstanceOf(HmmlabError);
    expect((e as HmmlabError).code).toBe('EOPLOG');
    return e as HmmlabError;
  }
  throw new Error('the log parsed, but an error was expected');
}

const GOOD = '{"op":"write","off":0,"len":100,"tag":1}';

describe('parseOplog rejects each broken rule, naming the line', () => {
  const cases: [string, string, RegExp][] = [
    ['not valid JSON', '{"op":"write",', /^line 3: not valid JSON/],
    ['not an object', '[1,2]', /^line 3: not a JSON object/],
    ['missing op', '{"off":1}', /^line 3: missing field "op"/],
    ['unknown op', '{"op":"wrte","off":0,"len":1,"tag":1}', /^line 3: unknown op "wrte"/],
    ['missing field', '{"op":"write","off":0,"len":1}', /^line 3: write: missing field "tag"/],
    ['missing size', '{"op":"truncate"}', /^line 3: truncate: missing field "size"/],
    [
      'negative number',
      '{"op":"read","off":-1,"len":1}',
      /^line 3: read: "off" must be a non-negative integer.*got -1/,
    ],
    [
      'non-integer',
      '{"op":"punch","off":0,"len":1.5}',
      /^line 3: punch: "len" must be a non-negative integer.*got 1.5/,
    ],
    ['string number', '{"op":"truncate","size":"10"}', /^line 3: truncate: "size" must be .*got "10"/],
    ['unsafe integer', '{"op":"read","off":1e300,"len":1}', /^line 3: read: "off" must be/],
    [
      'a tag past 2^53, as the log wrote it (JSON.parse would round it)',
      '{"op":"write","off":0,"len":1,"tag":9007199254740993}',
      /^line 3: write: "tag" must be a non-negative integer of at most 2\^53-1 \(9007199254740991\), got 9007199254740993$/,
    ],
    [
      "a typo'd field",
      '{"op":"write","off":0,"len":1,"tga":1}',
      /^line 3: write: unknown field "tga" \(did you mean "tag"\?\); write has "off", "len", "tag" and an optional "expect"$/,
    ],
    [
      'a field the op does not have',
      '{"op":"fsync","off":0}',
      /^line 3: fsync: unknown field "off"; fsync has no fields/,
    ],
    [
      'an unknown expected code',
      '{"op":"write","off":0,"len":1,"tag":1,"expect":"ENOSCP"}',
      /^line 3: write: "expect" must be one of ENOSPC, EFAULT, EFBIG, EIO, EROFS, got "ENOSCP"$/,
    ],
    [
      'devwrite off not a multiple of 4',
      '{"op":"devwrite","off":2,"len":4,"tag":1}',
      /^line 3: devwrite: off 2 is not a multiple of 4/,
    ],
    [
      'devread len not a multiple of 4',
      '{"op":"devread","off":0,"len":6}',
      /^line 3: devread: len 6 is not a multiple of 4/,
    ],
    [
      'diowrite off not a multiple of 512',
      '{"op":"diowrite","off":100,"len":512,"tag":1}',
      /^line 3: diowrite: off 100 is not a multiple of 512/,
    ],
    [
      'dioread len not a multiple of 512',
      '{"op":"dioread","off":0,"len":1000}',
      /^line 3: dioread: len 1000 is not a multiple of 512/,
    ],
    [
      'devread past EOF',
      '{"op":"devread","off":96,"len":8}',
      /^line 3: devread: range \[96, 104\) is past EOF \(file size 100\)/,
    ],
    [
      'devwrite past EOF',
      '{"op":"devwrite","off":200,"len":4,"tag":2}',
      /^line 3: devwrite: range \[200, 204\) is past EOF/,
    ],
  ];
  for (const [name, bad, message] of cases) {
    test(name, () => {
      const e = parseError(`${GOOD}\n{"op":"fsync"}\n${bad}\n{"op":"remount"}\n`);
      expect(e.message).toMatch(message);
    });
  }

  test('a device op past EOF after a truncate names its own line', () => {
    const e = parseError(
      `${GOOD}\n{"op":"devread","off":0,"len":100}\n{"op":"truncate","size":50}\n{"op":"devread","off":0,"len":52}\n`,
    );
    expect(e.message).toMatch(/^line 4: devread: range \[0, 52\) is past EOF \(file size 50\)/);
  });

  test('line numbers count blank lines', () => {
    const e = parseError(`\n${GOOD}\n\n   \n{"op":"nope"}\n`);
    expect(e.message).toMatch(/^line 5: unknown op "nope"/);
  });
});

describe('parseOplog accepts', () => {
  test('blank lines, CRLF and a BOM; lines[] gives each op its line', () => {
    const log = parseOplog(`\uFEFF${GOOD}\r\n\r\n{"op":"read","off":0,"len":10}\r\n{"op":"fsync"}`);
    expect(log.ops).toEqual([
      { op: 'write', off: 0, len: 100, tag: 1 },
      { op: 'read', off: 0, len: 10 },
      { op: 'fsync' },
    ]);
    expect(log.lines).toEqual([1, 3, 4]);
  });

  test('a device op that ends exactly at EOF, and zero-length ops', () => {
    const log = parseOplog(
      `${GOOD}\n{"op":"devread","off":96,"len":4}\n{"op":"write","off":500,"len":0,"tag":3}\n{"op":"devread","off":100,"len":0}`,
    );
    expect(log.ops).toHaveLength(4);
  });

  test('"expect" on any op, kept by the serializer', () => {
    const text = '{"op":"write","off":0,"len":1,"tag":1,"expect":"ENOSPC"}\n{"op":"fsync","expect":"EIO"}\n';
    const log = parseOplog(text);
    expect(log.ops).toEqual([
      { op: 'write', off: 0, len: 1, tag: 1, expect: 'ENOSPC' },
      { op: 'fsync', expect: 'EIO' },
    ]);
    expect(serializeOplog(log.ops)).toBe(text);
  });

  test('EOF follows an expected failure: a failed write does not extend the file, a failed mapwrite does', () => {
    const past = (first: string) => () => parseOplog(`${first}\n{"op":"devread","off":0,"len":8}\n`);
    expect(past('{"op":"write","off":0,"len":8,"tag":1,"expect":"ENOSPC"}')).toThrow(
      /^line 2: devread: range \[0, 8\) is past EOF \(file size 0\)/,
    );
    expect(past('{"op":"mapwrite","off":0,"len":8,"tag":1,"expect":"ENOSPC"}')).not.toThrow();
    expect(past('{"op":"mapwrite","off":0,"len":8,"tag":1,"expect":"EFBIG"}')).toThrow(/past EOF/);
  });

  test('a write past the file-size limit is EFBIG at its line, unless it expects EFBIG; a zero-length one is none', () => {
    const big = '{"op":"write","off":1073741820,"len":10,"tag":1}';
    expect(() => parseOplog(`${GOOD}\n${big}`)).toThrow(
      /^line 2 \(write off=1073741820 len=10 tag=1\): write at offset 1073741820 length 10 ends at 1073741830, past the file-size limit 1073741824$/,
    );
    expect(() => parseOplog(big, { maxFileSize: 2 ** 31 })).not.toThrow();
    expect(parseOplog(big.replace('}', ',"expect":"EFBIG"}')).ops).toHaveLength(1);
    expect(parseOplog('{"op":"write","off":1099511627776,"len":0,"tag":1}').ops).toHaveLength(1);
    expect(() => parseOplog('{"op":"truncate","size":1073741825}')).toThrow(/EFBIG|file-size limit/);
  });

  test('an empty log', () => {
    expect(parseOplog('')).toEqual({ ops: [], lines: [] });
    expect(parseOplog('\n\n')).toEqual({ ops: [], lines: [] });
  });
});

test('serializeOplog round-trips every op of a generated log through parseOplog', () => {
  const ops = generateOplog({ seed: 7, ops: 2000, device: true });
  const names = new Set(ops.map((o) => o.op));
  expect(names.size).toBe(13);
  const text = serializeOplog(ops);
  expect(text.endsWith('\n')).toBe(true);
  expect(text.split('\n')).toHaveLength(2001);
  expect(parseOplog(text).ops).toEqual(ops);
});

test('validateOplog checks ops that did not come from text, naming the given line', () => {
  const ops = [
    { op: 'write', off: 0, len: 8, tag: 1 },
    { op: 'devwrite', off: 4, len: 8, tag: 2 },
  ] as Op[];
  expect(() => validateOplog(ops, [10, 20])).toThrow(/^line 20: devwrite: range \[4, 12\) is past EOF/);
  expect(() => validateOplog([{ op: 'read', off: -3, len: 1 } as Op])).toThrow(/^line 1: read: "off"/);
});
