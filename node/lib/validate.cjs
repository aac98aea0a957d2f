// Argument checking, done before anything reaches the addon (so before
// anything boots): wrong types are TypeErrors with code
// ERR_INVALID_ARG_TYPE, bad values ERR_INVALID_ARG_VALUE, numbers out of
// range RangeErrors with ERR_OUT_OF_RANGE — Node's own conventions. An
// option name the API does not know is refused, never ignored: a typo
// like `memoryMB` must not silently bake a 256 MiB VM.
'use strict';

const { makeError } = require('./errors.cjs');

function describe(value) {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  const shown = typeof value === 'string' ? `'${value.slice(0, 40)}'` : String(value);
  return `type ${typeof value} (${shown})`;
}

function typeError(name, expected, value) {
  return makeError(
    'ERR_INVALID_ARG_TYPE',
    `The "${name}" argument must be ${expected}. Received ${describe(value)}`,
    {},
    TypeError,
  );
}

function valueError(name, why) {
  return makeError('ERR_INVALID_ARG_VALUE', `The "${name}" argument ${why}`, {}, TypeError);
}

function rangeError(name, why) {
  return makeError('ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. ${why}`, {}, RangeError);
}

function isPlainObject(v) {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

// Field checkers: (value, name) => normalized value. Each throws on bad input.

const string = (v, name) => {
  if (typeof v !== 'string') throw typeError(name, 'of type string', v);
  if (v.includes('\0')) throw valueError(name, 'must not contain NUL bytes');
  return v;
};

const nonEmptyString = (v, name) => {
  string(v, name);
  if (v.length === 0) throw valueError(name, 'must not be empty');
  return v;
};

const boolean = (v, name) => {
  if (typeof v !== 'boolean') throw typeError(name, 'of type boolean', v);
  return v;
};

const fn = (v, name) => {
  if (typeof v !== 'function') throw typeError(name, 'of type function', v);
  return v;
};

function integer({ min = 0, max = Number.MAX_SAFE_INTEGER } = {}) {
  return (v, name) => {
    if (typeof v !== 'number') throw typeError(name, 'of type number', v);
    if (!Number.isInteger(v)) throw rangeError(name, `It must be an integer. Received ${v}`);
    if (v < min || v > max) throw rangeError(name, `It must be >= ${min} and <= ${max}. Received ${v}`);
    return v;
  };
}

function oneOf(values) {
  return (v, name) => {
    string(v, name);
    if (!values.includes(v)) {
      throw valueError(name, `must be one of ${values.map((x) => `'${x}'`).join(', ')}. Received '${v}'`);
    }
    return v;
  };
}

function arrayOf(item, { nonEmpty = false } = {}) {
  return (v, name) => {
    if (!Array.isArray(v)) throw typeError(name, 'an array', v);
    if (nonEmpty && v.length === 0) throw valueError(name, 'must not be empty');
    return v.map((x, i) => item(x, `${name}[${i}]`));
  };
}

const stringArray = arrayOf(string);

/** A guest path: absolute, no NUL. */
const guestPath = (v, name) => {
  string(v, name);
  if (!v.startsWith('/')) throw valueError(name, `must be an absolute guest path. Received '${v}'`);
  return v;
};

/** A host path: non-empty, no NUL (made absolute by the caller where it matters). */
const hostPath = nonEmptyString;

/** `{ NAME: 'value' }` → `[{ name, value }]`, in the object's order. */
const envRecord = (v, name) => {
  if (!isPlainObject(v)) throw typeError(name, 'an object of strings', v);
  return Object.entries(v).map(([k, val]) => {
    if (k.length === 0 || k.includes('=') || k.includes('\0')) {
      throw valueError(name, `has an invalid variable name '${k}' (empty, or with '=' or NUL)`);
    }
    return { name: k, value: string(val, `${name}.${k}`) };
  });
};

/** Bytes: a Buffer, any Uint8Array (viewed without copying) or a UTF-8 string. */
const bytes = (v, name) => {
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw typeError(name, 'of type string, Buffer or Uint8Array', v);
};

/**
 * Checks an options object against `schema` ({ key: checker }): refuses
 * unknown keys and anything but a plain object; returns the checked values
 * of the keys that were given (undefined ones are left out).
 */
function options(value, schema, name, { required = [] } = {}) {
  if (value === undefined) value = {};
  if (!isPlainObject(value)) throw typeError(name, 'of type object', value);
  const known = Object.keys(schema);
  const out = {};
  for (const key of Object.keys(value)) {
    if (!Object.hasOwn(schema, key)) {
      const near = known.find((k) => k.toLowerCase() === key.toLowerCase());
      const hint = near ? ` (did you mean '${near}'?)` : ` (known options: ${known.join(', ')})`;
      throw valueError(`${name}.${key}`, `is not an option of ${name}${hint}`);
    }
    if (value[key] !== undefined) out[key] = schema[key](value[key], `${name}.${key}`);
  }
  for (const key of required) {
    if (out[key] === undefined) throw typeError(`${name}.${key}`, 'given (it is required)', undefined);
  }
  return out;
}

/** `options` as a field checker (for nested objects). */
function object(schema, opts) {
  return (v, name) => options(v, schema, name, opts);
}

module.exports = {
  string,
  nonEmptyString,
  boolean,
  fn,
  integer,
  oneOf,
  arrayOf,
  stringArray,
  guestPath,
  hostPath,
  envRecord,
  bytes,
  options,
  object,
  typeError,
  valueError,
  rangeError,
};
