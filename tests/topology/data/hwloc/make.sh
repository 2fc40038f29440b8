#!/bin/sh
# Regenerate the hwloc XML fixtures of this directory with the real hwloc tools
# (Debian 12 package `hwloc` 2.9.0: `apt-get install hwloc`). Nothing here is edited by hand:
# every file is exactly what lstopo / hwloc-annotate wrote. Run from this directory.
set -eu
lstopo --version

# 2 packages x 2 NUMA nodes (sub-NUMA clusters) x 4 cores x 2 threads, 1 GiB per node,
# no distances recorded.
lstopo -f --input "pack:2 numa:2 core:4 pu:2" --of xml pack2_numa2_core4_pu2.xml

# The same machine with a SLIT-like latency matrix (10 inside a node, 12 to the other node of the
# package, 32 across packages), added the way Linux's is exported: name NUMALatency, kind 5
# (HWLOC_DISTANCES_KIND_FROM_OS | HWLOC_DISTANCES_KIND_MEANS_LATENCY).
printf '%s\n' name=NUMALatency 5 4 numa:0 numa:1 numa:2 numa:3 \
    10 12 32 32  12 10 32 32  32 32 10 12  32 32 12 10 > snc_slit.txt
hwloc-annotate pack2_numa2_core4_pu2.xml pack2_numa2_slit.xml -- none -- distances snc_slit.txt
rm snc_slit.txt

# One package, one node.
lstopo -f --input "pack:1 core:4 pu:2" --of xml single_node.xml

# Xeon Max with HBM in flat mode: per package a DDR node (os index 0, 1) and a CPU-less HBM node
# (2, 3) attached beside it, with the distances of the ALCF Aurora sample (local HBM 13, remote
# HBM 23). `numa:K` in the distance file is hwloc's logical index (0=P#0, 1=P#2, 2=P#1, 3=P#3).
lstopo -f --input "pack:2 [numa(memory=512GB indexes=0,2,1,3)] [numa(memory=64GB)] core:4 pu:2" \
    --of xml xeonmax_flat_base.xml
printf '%s\n' name=NUMALatency 5 4 numa:0 numa:1 numa:2 numa:3 \
    10 13 21 23  13 10 23 23  21 23 10 13  23 23 13 10 > hbm_slit.txt
hwloc-annotate xeonmax_flat_base.xml xeonmax_flat.xml -- none -- distances hbm_slit.txt
rm hbm_slit.txt xeonmax_flat_base.xml

# Memoryless CPU nodes (one per package, no local_memory) and a CPU-less memory node attached
# to the whole machine (a CXL expander), P#2.
lstopo -f --input "[numa(memory=256GB)] pack:2 [numa] core:2 pu:2" --of xml memoryless_cxl.xml
