package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"godwit/internal/procfs"
)

func rawMsg(event uint8, a, b, c uint64) []byte {
	buf := make([]byte, msgSize)
	buf[0] = event
	binary.NativeEndian.PutUint64(buf[8:], a)
	binary.NativeEndian.PutUint64(buf[16:], b)
	binary.NativeEndian.PutUint64(buf[24:], c)
	return buf
}

func TestDecodeMsg(t *testing.T) {
	cases := []struct {
		raw  []byte
		want Msg
	}{
		{rawMsg(EventPagefault, PagefaultFlagWrite, 0x7f0000001234, 4242), Msg{Event: EventPagefault, Flags: PagefaultFlagWrite, Address: 0x7f0000001234, TID: 4242, UFD: -1}},
		{rawMsg(EventFork, 17, 0, 0), Msg{Event: EventFork, UFD: 17}},
		{rawMsg(EventRemap, 0x1000, 0x2000, 0x3000), Msg{Event: EventRemap, From: 0x1000, To: 0x2000, Len: 0x3000, UFD: -1}},
		{rawMsg(EventRemove, 0x1000, 0x5000, 0), Msg{Event: EventRemove, Start: 0x1000, End: 0x5000, UFD: -1}},
		{rawMsg(EventUnmap, 0x1000, 0x5000, 0), Msg{Event: EventUnmap, Start: 0x1000, End: 0x5000, UFD: -1}},
	}
	var all []byte
	for _, c := range cases {
		got, err := DecodeMsg(c.raw)
		if err != nil || got != c.want {
			t.Errorf("DecodeMsg(%x) = %+v, %v; want %+v", c.raw, got, err, c.want)
		}
		all = append(all, c.raw...)
	}
	msgs, err := DecodeMsgs(all, nil)
	if err != nil || len(msgs) != len(cases) {
		t.Fatalf("DecodeMsgs: %d msgs, %v", len(msgs), err)
	}
	if _, err := DecodeMsg(make([]byte, 31)); !errors.Is(err, ErrShortMsg) {
		t.Errorf("short: %v", err)
	}
	if _, err := DecodeMsg(rawMsg(0x99, 0, 0, 0)); !errors.Is(err, ErrUnknownEvent) {
		t.Errorf("unknown event: %v", err)
	}
	if _, err := DecodeMsg(rawMsg(EventFork, 1<<32-1, 0, 0)); err == nil {
		t.Errorf("fork with fd 2^32-1 accepted")
	}
	// A bad message keeps the ones before it (their FORK fds are ours).
	bad := append(rawMsg(EventFork, 5, 0, 0), rawMsg(0x42, 0, 0, 0)...)
	msgs, err = DecodeMsgs(bad, nil)
	if err == nil || len(msgs) != 1 || msgs[0].UFD != 5 {
		t.Errorf("DecodeMsgs(good, bad) = %v, %v", msgs, err)
	}
}

func FuzzDecodeMsg(f *testing.F) {
	f.Add(rawMsg(EventPagefault, 1, 0x1000, 7))
	f.Add(rawMsg(EventFork, 3, 0, 0))
	f.Add(rawMsg(EventRemap, 1, 2, 3))
	f.Add(append(rawMsg(EventUnmap, 1, 2, 0), rawMsg(EventRemove, 3, 4, 0)...))
	f.Add([]byte{0x12})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMsg(b)
		if err == nil {
			if len(b) < msgSize {
				t.Fatalf("decoded a %d-byte message", len(b))
			}
			if m.Event < EventPagefault || m.Event > EventUnmap {
				t.Fatalf("decoded unknown event %#x", m.Event)
			}
			if m.Event == EventFork && m.UFD < 0 {
				t.Fatalf("fork with negative fd")
			}
			_ = m.String()
		}
		msgs, err := DecodeMsgs(b, nil)
		if err == nil && len(msgs)*msgSize != len(b) {
			t.Fatalf("DecodeMsgs: %d messages from %d bytes", len(msgs), len(b))
		}
	})
}

// Trackable drops the special mappings that cannot be registered.
func TestTrackable(t *testing.T) {
	in := []byte(`55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123 /usr/bin/x
7ffd1e7e0000-7ffd1e801000 rw-p 00000000 00:00 0                          [stack]
7ffd1e9f2000-7ffd1e9f6000 r--p 00000000 00:00 0                          [vvar]
7ffd1e9f6000-7ffd1e9f8000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`)
	ms, err := procfs.ParseMaps(in)
	if err != nil {
		t.Fatal(err)
	}
	v := Trackable(ms)
	want := []VMA{{0x55d0c0a00000, 0x55d0c0a01000}, {0x7ffd1e7e0000, 0x7ffd1e801000}, {0x7ffd1e9f6000, 0x7ffd1e9f8000}}
	if fmt.Sprint(v) != fmt.Sprint(want) {
		t.Fatalf("got %v want %v", v, want)
	}
}
