/**
 * CPU threads (issue 9): worker threads that load and store through shared mappings of the page
 * cache under an access protocol (access.ts), the owner's side (threads.ts), the CPU TLB shootdown
 * (tlb.ts), and the owner API over HmmFs (hmmfsOwner.ts). docs/ARCHITECTURE.md, "Threads and locks".
 */
export { CpuMm, MAX_FAULT_RETRIES } from './access.ts';
export { HmmFsCpuOwner } from './hmmfsOwner.ts';
export type { CpuAccessStats, CpuFaultHandler, CpuOwnerApi, CpuWorkerApi, VmaDesc } from './protocol.ts';
export { AccessStall } from './stall.ts';
export { CpuThreads, type CpuThreadsOptions, type CpuThreadsStats, type CpuWorker } from './threads.ts';
export { CpuTlb, type CpuTlbStats, type PteChange, vma_id } from './tlb.ts';
