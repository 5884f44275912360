// Bounds the builtins that QuickJS runs natively without polling its interrupt handler,
// so that no call stays deaf to the time limit and RG.ABORTEXECUTION for long.
// Run once in every run's context before the script; see sandbox.rs.
(function (maxLength, memoryLimit, maxWork, sortInJs, poll) {
  'use strict';
  const { apply, getOwnPropertyDescriptor, defineProperty } = Reflect;
  const ObjectOf = Object;
  const isArray = Array.isArray;
  const trunc = Math.trunc;
  const RangeErr = RangeError;
  const strIndexOf = String.prototype.indexOf;
  const strStartsWith = String.prototype.startsWith;
  const spreadable = Symbol.isConcatSpreadable;
  const MAX_SAFE = 2 ** 53 - 1;

  // ToLength of a length property (ToNumber errors are left to the builtin itself).
  function toLength(v) {
    if (typeof v !== 'number') {
      if (typeof v === 'symbol' || typeof v === 'bigint') return 0;
      v = +v;
    }
    if (!(v > 0)) return 0;
    v = trunc(v);
    return v > MAX_SAFE ? MAX_SAFE : v;
  }
  function lengthOf(o) {
    return o === null || o === undefined ? 0 : toLength(ObjectOf(o).length);
  }
  function refuse(where, len) {
    throw new RangeErr(
      `${where}: length ${len} is more than the ${maxLength} elements the JS memory limit (${memoryLimit} bytes) can hold`);
  }
  function check(where, o) {
    const len = lengthOf(o);
    if (len > maxLength) refuse(where, len);
    return len;
  }

  // Replaces proto[name] with a method that runs `before(this, arguments)` then the
  // original (with the arguments it returns, if any); name, length and attributes kept.
  function wrap(proto, name, where, before) {
    const desc = getOwnPropertyDescriptor(proto, name);
    if (!desc || typeof desc.value !== 'function') return;
    const original = desc.value;
    const wrapper = {
      [name]() {
        const args = before(this, arguments, where, original);
        return apply(original, this, args === undefined ? arguments : args);
      },
    }[name];
    defineProperty(wrapper, 'length', { value: original.length, configurable: true });
    defineProperty(proto, name, { value: wrapper, writable: desc.writable, enumerable: desc.enumerable,
      configurable: desc.configurable });
  }

  const AP = Array.prototype;
  for (const name of ['join', 'toLocaleString', 'fill', 'reverse', 'copyWithin', 'slice', 'splice', 'flat',
    'flatMap', 'shift', 'unshift', 'toReversed', 'toSpliced', 'with']) {
    wrap(AP, name, `Array.prototype.${name}`, (self, args, where) => { check(where, self); });
  }
  wrap(AP, 'concat', 'Array.prototype.concat', (self, args, where) => {
    check(where, self);
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      if (a !== null && typeof a === 'object' && (isArray(a) || a[spreadable])) check(where, a);
    }
  });

  // The default order of Array.prototype.sort (undefined values are put last by sort
  // itself): comparing strings, as a JS function so that a long sort polls.
  const byString = (a, b) => {
    const x = `${a}`, y = `${b}`;
    return x < y ? -1 : y < x ? 1 : 0;
  };
  for (const name of ['sort', 'toSorted']) {
    wrap(AP, name, `Array.prototype.${name}`, (self, args, where) => {
      const len = check(where, self);
      if (args.length === 0 || args[0] === undefined) {
        if (len > sortInJs) return [byString];
      }
    });
  }

  // Typed arrays hold what memory holds; only their sort runs long without polling.
  const TAP = Object.getPrototypeOf(Int8Array.prototype);
  const byNumber = (a, b) => {
    if (a < b) return -1;
    if (a > b) return 1;
    if (a === b) {
      if (a === 0 && b === 0) {
        const x = 1 / a, y = 1 / b;
        return x < y ? -1 : x > y ? 1 : 0;
      }
      return 0;
    }
    // NaN last.
    const an = a !== a, bn = b !== b;
    return an && bn ? 0 : an ? 1 : -1;
  };
  const taLength = getOwnPropertyDescriptor(TAP, 'length').get;
  for (const name of ['sort', 'toSorted']) {
    wrap(TAP, name, `TypedArray.prototype.${name}`, (self, args) => {
      if (args.length !== 0 && args[0] !== undefined) return;
      let len = 0;
      try { len = apply(taLength, self, []); } catch (e) { return; }
      if (len > sortInJs) return [byNumber];
    });
  }

  // JSON.stringify visits every element of a sparse array natively: a replacer function,
  // even one that changes nothing, is a JS call per value, which polls.
  const identity = function (key, value) { return value; };
  wrap(JSON, 'stringify', 'JSON.stringify', (self, args) => {
    const replacer = args[1];
    if (typeof replacer !== 'function' && !isArray(replacer)) return [args[0], identity, args[2]];
  });

  // String searches are naive (length x pattern length); past `maxWork` they run as a
  // JS loop of native single-character searches and comparisons, which polls.
  const SP = String.prototype;
  function searchWork(s, p) {
    return (s.length - p.length + 1) * p.length;
  }
  function slowIndexOf(s, p, from) {
    const first = p[0];
    for (let i = from; ;) {
      poll();
      const j = apply(strIndexOf, s, [first, i]);
      if (j < 0 || j + p.length > s.length) return -1;
      if (apply(strStartsWith, s, [p, j])) return j;
      i = j + 1;
    }
  }
  // ToIntegerOrInfinity of a position argument.
  function toPosition(v) {
    const n = +v;
    return n !== n ? 0 : trunc(n);
  }
  function stringThis(self, where) {
    if (self === null || self === undefined) throw new TypeError(`${where} called on null or undefined`);
    return `${self}`;
  }
  function searchFrom(self, args, where) {
    const s = stringThis(self, where);
    const search = args[0];
    if (search !== null && typeof search === 'object' && where.endsWith('includes')) {
      // includes refuses regexps: leave that (and its error) to the builtin.
      return { native: true };
    }
    const p = `${search}`;
    const pos = toPosition(args[1]);
    const from = pos < 0 ? 0 : pos > s.length ? s.length : pos;
    return { s, p, from };
  }
  for (const name of ['indexOf', 'includes']) {
    const desc = getOwnPropertyDescriptor(SP, name);
    const original = desc.value;
    const where = `String.prototype.${name}`;
    const wrapper = {
      [name]() {
        const r = searchFrom(this, arguments, where);
        if (r.native || r.p.length <= 1 || searchWork(r.s, r.p) <= maxWork) {
          return r.native ? apply(original, this, arguments) : apply(original, r.s, [r.p, r.from]);
        }
        const at = slowIndexOf(r.s, r.p, r.from);
        return name === 'includes' ? at >= 0 : at;
      },
    }[name];
    defineProperty(wrapper, 'length', { value: original.length, configurable: true });
    defineProperty(SP, name, { value: wrapper, writable: desc.writable, enumerable: desc.enumerable,
      configurable: desc.configurable });
  }
  // The others refuse a search they cannot bound.
  const tooMuch = (where, s, p) => {
    throw new RangeErr(`${where}: searching ${s.length} characters for ${p.length} is more work than allowed `
      + `(${maxWork} character comparisons)`);
  };
  wrap(SP, 'lastIndexOf', 'String.prototype.lastIndexOf', (self, args, where) => {
    const s = stringThis(self, where), p = `${args[0]}`;
    if (p.length > 1 && searchWork(s, p) > maxWork) tooMuch(where, s, p);
    return [p, args.length > 1 ? args[1] : undefined];
  });
  for (const name of ['split', 'replace', 'replaceAll']) {
    wrap(SP, name, `String.prototype.${name}`, (self, args, where) => {
      const pattern = args[0];
      // Regexps and other objects dispatch through their own methods (regexps poll).
      if (self === null || self === undefined || (pattern !== null && typeof pattern === 'object')
        || typeof pattern === 'function') return;
      if (typeof pattern === 'symbol') return;
      const s = `${self}`, p = `${pattern}`;
      if (p.length > 1 && searchWork(s, p) > maxWork) tooMuch(where, s, p);
    });
  }
})
