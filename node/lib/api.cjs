// The public API of @supermachine/core (declared in index.d.ts).
'use strict';

const { Image, Pool } = require('./image.cjs');
const { Vm, WarmupVm, ExecChild, TcpForwarder } = require('./vm.cjs');
const { ErrorCodes } = require('./errors.cjs');

module.exports = { Image, Pool, Vm, WarmupVm, ExecChild, TcpForwarder, ErrorCodes };
