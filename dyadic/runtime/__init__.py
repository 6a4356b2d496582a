"""Running builds: `loader` (the TVM runtime only, in this process), `remote` (TVM RPC and a local
GPU), `bundle` (an arm deploy bundle's runner, natively or under qemu-user)."""
