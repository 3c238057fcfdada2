package xstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// sprTiles is where Sapphire Rapids puts the tile state (CPUID 0xD):
// the test runs on CPUs without AMX too.
var sprTiles = tileLayout{cfg: 2752, data: 2816}

// TestTilesRoundTrip: tile state read from one buffer and laid over
// another comes back byte for byte, with its XSTATE_BV bits.
func TestTilesRoundTrip(t *testing.T) {
	const size = 2816 + TileDataSize
	src := make([]byte, size)
	cfg := bytes.Repeat([]byte{0x11}, TileCfgSize)
	data := make([]byte, TileDataSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	copy(src[sprTiles.cfg:], cfg)
	copy(src[sprTiles.data:], data)
	if c, _, err := tiles(src[:512], sprTiles); c != nil || err != nil {
		t.Fatalf("an FXSAVE-only buffer: %v %v", c != nil, err)
	}
	if c, d, err := tiles(src, sprTiles); c != nil || d != nil || err != nil {
		t.Fatalf("tiles not in use: %v %v %v", c != nil, d != nil, err)
	}
	binary.LittleEndian.PutUint64(src[xsaveHeaderOffset:], 1<<XfeatTileCfg|1<<XfeatTileData|3)
	c, d, err := tiles(src, sprTiles)
	if err != nil || !bytes.Equal(c, cfg) || !bytes.Equal(d, data) {
		t.Fatalf("tiles: %v", err)
	}
	dst := make([]byte, size)
	binary.LittleEndian.PutUint64(dst[xsaveHeaderOffset:], 3)
	if err := putTiles(dst, c, d, sprTiles); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dst[sprTiles.cfg:], src[sprTiles.cfg:]) || binary.LittleEndian.Uint64(dst[xsaveHeaderOffset:]) != 1<<17|1<<18|3 {
		t.Fatal("laid-over tile state differs")
	}
	// Only XTILECFG in use: XTILEDATA reads as its init state.
	binary.LittleEndian.PutUint64(src[xsaveHeaderOffset:], 1<<XfeatTileCfg)
	if _, d, _ := tiles(src, sprTiles); !bytes.Equal(d, make([]byte, TileDataSize)) {
		t.Fatal("XTILEDATA not in use but read")
	}
	if err := putTiles(make([]byte, 2000), c, d, sprTiles); err == nil {
		t.Fatal("a buffer without room accepted")
	}
	if err := putTiles(dst, c, d, tileLayout{}); !errors.Is(err, ErrNoAMX) {
		t.Fatalf("no AMX: %v", err)
	}
	if _, _, err := tiles(src, tileLayout{}); !errors.Is(err, ErrNoAMX) {
		t.Fatalf("no AMX: %v", err)
	}
}

// TestHostTiles: this CPU's layout agrees with its XSAVE buffer size.
func TestHostTiles(t *testing.T) {
	l := hostTiles()
	t.Logf("this CPU's tile state: %+v (0: no AMX)", l)
	if (l.cfg == 0) != (l.data == 0) {
		t.Fatalf("half a tile layout: %+v", l)
	}
}
