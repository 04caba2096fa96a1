// Stands in for CUDA's header when the kernels are compiled for the host: host.h, included
// first, defines the bf16 type and its conversions.
#pragma once
