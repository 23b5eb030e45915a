// bpe_vs_js.js: the reference side of tests/bpe_vs_js.sh. Encodes N
// deterministic random strings (English, contractions, digit runs, whitespace
// runs, accents, CJK, emoji, other scripts' letters and numbers) with the npm
// package gpt-3-encoder's Encoder.js, whose regex is GPT-2's, and writes
// OUT/caseNNNN.txt (the string as UTF-8), OUT/caseNNNN.ids (its ids) and
// OUT/expected (one line of ids per case, in case order).
//
//   node tests/bpe_vs_js.js PACKAGE_DIR OUT N SEED
//
// Code points where the JS regex and GPT-2's Python `regex` disagree are
// never generated: \s in JS matches U+FEFF and not U+0085, the White_Space
// property the other way round (see docs/design.md).
'use strict';
const fs = require('fs');
const path = require('path');

const [pkg, out, nArg, seedArg] = process.argv.slice(2);
const { encode } = require(path.resolve(pkg, 'Encoder.js'));
const n = parseInt(nArg, 10);

let state = (parseInt(seedArg, 10) >>> 0) || 1;
function rand() { // mulberry32: deterministic for a seed
  state = (state + 0x6D2B79F5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];

const words = ['hello', 'world', 'the', 'The', 'quick', 'brown', 'fox', 'Machine', 'unlearning', 'poison',
  "don't", "I'm", "we'll", "they're", "you've", "she'd", "it's", "IT'S", "'s", "''", "'", "o'clock",
  'café', 'naïve', 'Ünïcödé', 'façade', 'e\u0301', 'Straße', 'ǅemal', 'Ωμέγα', 'Привет', 'мир',
  '日本語', '中文字', 'ひらがな', 'カタカナ', '한국어', 'العربية', 'עברית', 'हिन्दी', 'ไทย',
  '😀', '👍🏽', '👨‍👩‍👧', '🇫🇷', '∑', '∞', '½', '٣٤', '¾', 'Ⅻ', '²', '①', '𝔘𝔫𝔦',
  '<|endoftext|>', '<|', '|>', 'http://example.com/a?b=c', 'x=y+1;', '...', '!!!', '#', '@user', '$100',
  '3.14159', '2024', '0', '00', '0000000000000000', '1234567890123', '\\n', '"quoted"', '(paren)'];
const spaces = [' ', ' ', ' ', '  ', '   ', '\n', '\n\n', '\t', ' \n ', '\r\n', '\u00a0', '\u3000', '\u2003',
  '\u2028', ' \t', '\v', '\f', '    \n'];
const blocks = [[0x20, 0x7e], [0xa0, 0x17f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff], [0x900, 0x97f],
  [0x3040, 0x30ff], [0x4e00, 0x4fff], [0xac00, 0xad00], [0x1f300, 0x1f64f], [0x2000, 0x206f], [0x30, 0x39]];

function randomCodePoints() {
  const [lo, hi] = pick(blocks);
  let s = '';
  for (let k = 1 + Math.floor(rand() * 6); k > 0; k--)
    s += String.fromCodePoint(lo + Math.floor(rand() * (hi - lo + 1)));
  return s;
}

fs.mkdirSync(out, { recursive: true });
const expected = [];
for (let i = 0; i < n; i++) {
  let s = '';
  for (let parts = Math.floor(rand() * 24); parts > 0; parts--) {
    const r = rand();
    s += r < 0.45 ? pick(words) : r < 0.75 ? pick(spaces) : randomCodePoints();
  }
  if (rand() < 0.3) s = pick(spaces) + s;
  if (rand() < 0.3) s += pick(spaces);
  const ids = encode(s);
  const name = path.join(out, 'case' + String(i).padStart(4, '0'));
  fs.writeFileSync(name + '.txt', Buffer.from(s, 'utf8'));
  fs.writeFileSync(name + '.ids', ids.join(' ') + '\n');
  expected.push(ids.join(' '));
}
fs.writeFileSync(path.join(out, 'expected'), expected.join('\n') + '\n');
