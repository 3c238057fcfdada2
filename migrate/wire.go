package migrate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	pb "godwit/migrate/internal/proto"
)

// Version is the control protocol's version; Hello carries it and a peer
// refuses any other.
const Version = 1

// maxMessage bounds one control message: image files travel in chunks of
// fileChunk, everything else is small.
const (
	maxMessage = 2 << 20
	fileChunk  = 1 << 20
)

// writeMsg frames m with its 4-byte big-endian length.
func writeMsg(w io.Writer, m *pb.Envelope) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("control message of %d bytes (limit %d)", len(b), maxMessage)
	}
	buf := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

// readMsg reads one framed message; a length over maxMessage, a short
// frame or a message that does not decode is an error, never a panic.
func readMsg(r io.Reader) (*pb.Envelope, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxMessage {
		return nil, fmt.Errorf("control message of %d bytes (limit %d)", n, maxMessage)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("control message: %w", err)
	}
	m := &pb.Envelope{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	if m.Msg == nil {
		return nil, errors.New("control message: empty")
	}
	return m, nil
}
