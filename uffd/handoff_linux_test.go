package uffd

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

func TestHandoffRoundTrip(t *testing.T) {
	h := Handoff{Pid: 4242, Features: FeatureNonCoop, Ranges: []Range{{0x1000, 0x3000}, {0x10000, 0x20000}}}
	got, err := UnmarshalHandoff(MarshalHandoff(h))
	if err != nil || !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	bad := []Handoff{
		{Pid: 1, Ranges: []Range{{0x1000, 0x1000}}},
		{Pid: 1, Ranges: []Range{{0x1001, 0x2000}}},
		{Pid: 1, Ranges: []Range{{0x4000, 0x5000}, {0x1000, 0x2000}}},
		{Pid: 0, Ranges: []Range{{0x1000, 0x2000}}},
	}
	for _, b := range bad {
		if _, err := UnmarshalHandoff(MarshalHandoff(b)); err == nil {
			t.Errorf("%+v accepted", b)
		}
	}
}

func TestHandoffSocket(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	h := Handoff{Pid: 77, Features: 3, Ranges: []Range{{0x1000, 0x2000}}}
	done := make(chan error, 1)
	go func() { done <- SendHandoff(sp[0], h, efd) }()
	got, fd, err := RecvHandoff(sp[1])
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("got %+v", got)
	}
	var a, b unix.Stat_t
	unix.Fstat(fd, &a)
	unix.Fstat(efd, &b)
	if a.Ino != b.Ino {
		t.Fatalf("received fd is another file")
	}
	if err := AnswerHandoff(sp[1], errTest); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || err.Error() != "lazy-pages daemon refused the task: no" {
		t.Fatalf("answer: %v", err)
	}
}

var errTest = testErr("no")

type testErr string

func (e testErr) Error() string { return string(e) }

func FuzzUnmarshalHandoff(f *testing.F) {
	f.Add(MarshalHandoff(Handoff{Pid: 5, Features: 1, Ranges: []Range{{0x1000, 0x2000}}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := UnmarshalHandoff(b)
		if err != nil {
			return
		}
		if again, err := UnmarshalHandoff(MarshalHandoff(h)); err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("re-encode: %+v %v", again, err)
		}
	})
}
