package dumper

import (
	"godwit/internal/drivers"
	"godwit/internal/model"
)

// VMA is one mapping as the model keeps it.
type VMA = model.VMA

// CollectVMAs reads /proc/PID/smaps into VMAs (drivers.CollectVMAs).
// fileID (nil when only memory is wanted, e.g. by pre-dump) names the
// files of file mappings.
func CollectVMAs(pid int, fileID drivers.FileIDFunc) ([]VMA, error) {
	return drivers.CollectVMAs(pid, fileID)
}
