# The kernel matrix (vm/README.md): every leg, or some with KERNELS=6.1,host.
KERNELS ?= 6.1,6.12,host,5.10

.PHONY: vm-test
vm-test:
	vm/run-matrix --kernels $(KERNELS)

# Every benchmark (bench/run); results land in bench/results/.
.PHONY: bench
bench:
	bench/run
