// @supermachine/core — ES module entry: the same objects as the CommonJS
// entry (one copy of the addon and its state per process).
import api from './index.cjs';

export const {
  Image,
  Pool,
  Vm,
  WarmupVm,
  ExecChild,
  TcpForwarder,
  ErrorCodes,
} = api;
export default api;
