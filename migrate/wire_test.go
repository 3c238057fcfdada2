package migrate

import (
	"bytes"
	"encoding/binary"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "godwit/migrate/internal/proto"
)

func TestWireRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := &pb.Envelope{Msg: &pb.Envelope_Hello{Hello: &pb.Hello{Version: Version, Pid: 42, Pids: []int32{42, 43}, Files: []string{"/etc/hostname"}}}}
	if err := writeMsg(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := readMsg(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("got %v, want %v", out, in)
	}
}

func TestWireRefusesOversizedAndEmpty(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], maxMessage+1)
	if _, err := readMsg(bytes.NewReader(hdr[:])); err == nil {
		t.Error("oversized frame accepted")
	}
	binary.BigEndian.PutUint32(hdr[:], 0)
	if _, err := readMsg(bytes.NewReader(hdr[:])); err == nil {
		t.Error("empty message accepted")
	}
	big := &pb.Envelope{Msg: &pb.Envelope_File{File: &pb.File{Name: "x", Data: make([]byte, maxMessage)}}}
	if err := writeMsg(&bytes.Buffer{}, big); err == nil {
		t.Error("oversized message written")
	}
}

func FuzzReadMsg(f *testing.F) {
	var buf bytes.Buffer
	_ = writeMsg(&buf, &pb.Envelope{Msg: &pb.Envelope_RoundStart{RoundStart: &pb.RoundStart{N: 3}}})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, 0x0a, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			m, err := readMsg(r)
			if err != nil {
				return
			}
			if m.Msg == nil {
				t.Fatal("nil message without error")
			}
		}
	})
}
