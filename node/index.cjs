// @supermachine/core — CommonJS entry. The API lives in lib/; see index.d.ts.
'use strict';

module.exports = require('./lib/api.cjs');
