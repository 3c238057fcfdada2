package xstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"godwit/internal/cpuinfo"
)

// AMX tile state: XTILECFG (component 17, 64 bytes) and XTILEDATA
// (component 18, 8 KiB), from arch/x86/include/asm/fpu/types.h. CRIU's
// fpregs entry has no field for them: the dumper keeps them in the godwit
// image, and the restorer lays them over the thread's buffer after the
// rest (PutTiles).
const (
	XfeatTileCfg  = 17
	XfeatTileData = 18
	TileCfgSize   = 64
	TileDataSize  = 8192
)

// ErrNoAMX: this CPU (or kernel) has no AMX tile state.
var ErrNoAMX = errors.New("this CPU has no AMX tile state")

// tileLayout is where XTILECFG and XTILEDATA sit in the standard format
// (0: absent).
type tileLayout struct{ cfg, data int }

var hostTiles = sync.OnceValue(func() tileLayout {
	var l tileLayout
	if eax, _, _, _ := cpuinfo.CPUID(0, 0); eax < 0xd {
		return l
	}
	if size, off, _, _ := cpuinfo.CPUID(0xd, XfeatTileCfg); size == TileCfgSize {
		l.cfg = int(off)
	}
	if size, off, _, _ := cpuinfo.CPUID(0xd, XfeatTileData); size == TileDataSize {
		l.data = int(off)
	}
	return l
})

const tileBits = 1<<XfeatTileCfg | 1<<XfeatTileData

// Tiles returns the tile state of a raw NT_X86_XSTATE buffer of this CPU,
// nil when the thread has none in use (XSTATE_BV bits 17 and 18 clear:
// the tiles are in their init state).
func Tiles(raw []byte) (cfg, data []byte, err error) { return tiles(raw, hostTiles()) }

func tiles(raw []byte, l tileLayout) (cfg, data []byte, err error) {
	if len(raw) < xsaveHeaderOffset+8 {
		return nil, nil, nil // FXSAVE only: no XSAVE header, no tiles
	}
	bv := binary.LittleEndian.Uint64(raw[xsaveHeaderOffset:])
	if bv&tileBits == 0 {
		return nil, nil, nil
	}
	if l.cfg == 0 || l.data == 0 {
		return nil, nil, fmt.Errorf("xstate: tile state in use: %w", ErrNoAMX)
	}
	if len(raw) < l.cfg+TileCfgSize || len(raw) < l.data+TileDataSize {
		return nil, nil, fmt.Errorf("xstate: %d bytes, too short for the tile state", len(raw))
	}
	// A component whose XSTATE_BV bit is clear is in its init state
	// (zeros), whatever the buffer holds.
	cfg, data = make([]byte, TileCfgSize), make([]byte, TileDataSize)
	if bv&(1<<XfeatTileCfg) != 0 {
		copy(cfg, raw[l.cfg:])
	}
	if bv&(1<<XfeatTileData) != 0 {
		copy(data, raw[l.data:])
	}
	return cfg, data, nil
}

// PutTiles lays tile state over buf, a raw NT_X86_XSTATE buffer of this
// CPU, and marks it in use.
func PutTiles(buf, cfg, data []byte) error { return putTiles(buf, cfg, data, hostTiles()) }

func putTiles(buf, cfg, data []byte, l tileLayout) error {
	if len(cfg) != TileCfgSize || len(data) != TileDataSize {
		return fmt.Errorf("xstate: tile state of %d+%d bytes, want %d+%d", len(cfg), len(data), TileCfgSize, TileDataSize)
	}
	if l.cfg == 0 || l.data == 0 {
		return ErrNoAMX
	}
	if len(buf) < xsaveHeaderOffset+8 || len(buf) < l.cfg+TileCfgSize || len(buf) < l.data+TileDataSize {
		return fmt.Errorf("xstate: a %d-byte buffer has no room for the tile state (no AMX permission?)", len(buf))
	}
	copy(buf[l.cfg:], cfg)
	copy(buf[l.data:], data)
	bv := binary.LittleEndian.Uint64(buf[xsaveHeaderOffset:])
	binary.LittleEndian.PutUint64(buf[xsaveHeaderOffset:], bv|tileBits)
	return nil
}

// HaveAMX reports whether this CPU has the AMX tile state components.
func HaveAMX() bool { l := hostTiles(); return l.cfg != 0 && l.data != 0 }
