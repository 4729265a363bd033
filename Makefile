# The kernel matrix (vm/README.md): every leg, or some with KERNELS=6.1,host.
KERNELS ?= 6.1,6.12,host,5.10

.PHONY: vm-test
vm-test:
	vm/run-matrix --kernels $(KERNELS)

# Every benchmark (bench/run); results land in bench/results/.
.PHONY: bench
bench:
	bench/run

# shape needs sch_fq, which not every host kernel has: measure it inside
# Debian's 6.1 kernel (installed by `make vm-test KERNELS=6.1`, or by the
# test suite's VM leg). ACCEL= where /dev/kvm works.
SHAPE_KERNEL ?= $(lastword $(sort $(wildcard /boot/vmlinuz-6.1.0-*-amd64)))
ACCEL ?= --disable-kvm
SHAPE_RESULTS = $(shell date +%Y-%m-%d)-shape-$(patsubst vmlinuz-%,%,$(notdir $(SHAPE_KERNEL))).txt
.PHONY: bench-shape
bench-shape:
	mkdir -p bench/results
	PATH=$(CURDIR)/vm/.venv/bin:$$PATH vng --run $(SHAPE_KERNEL) $(ACCEL) --memory 3G --cpus 2 \
	    --overlay-rwdir=$(CURDIR) --rwdir=$(CURDIR)/bench/results --cwd $(CURDIR) \
	    --exec ".venv/bin/python -u bench/throttle.py --actions shape > bench/results/$(SHAPE_RESULTS).new \
	           2> bench/results/$(SHAPE_RESULTS).stderr"
	grep -q '^targets:' bench/results/$(SHAPE_RESULTS).new || { cat bench/results/$(SHAPE_RESULTS).stderr; exit 1; }
	{ echo "# make bench-shape: bench/throttle.py --actions shape inside $(notdir $(SHAPE_KERNEL)) (vng $(ACCEL), 2 CPUs, 3G), $$(date -u +%FT%RZ)"; \
	  cat bench/results/$(SHAPE_RESULTS).new; } > bench/results/$(SHAPE_RESULTS)
	rm bench/results/$(SHAPE_RESULTS).new bench/results/$(SHAPE_RESULTS).stderr
	cat bench/results/$(SHAPE_RESULTS)

# The fresh-machine check (tests/fresh_machine.sh): the README's test command
# from a clean clone, without bpffs or /lib/modules/$(uname -r), modules reversed.
.PHONY: fresh-check
fresh-check:
	tests/fresh_machine.sh
