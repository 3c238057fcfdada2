package drivers

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// procNetRow finds socket ino's row in a /proc/net table whose tenth
// column is the inode (raw, raw6, icmp, icmp6, netlink): header checks the
// first line's fields. It returns the row's fields and its text (for
// errors); ok is false when no row has ino.
func procNetRow(b []byte, header func(fs []string) bool, ino uint64) (fs []string, line string, ok bool, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if first {
			first = false
			if !header(fs) {
				return nil, "", false, fmt.Errorf("unexpected header %q", sc.Text())
			}
			continue
		}
		if len(fs) < 10 {
			return nil, "", false, fmt.Errorf("short line %q", sc.Text())
		}
		i, err := strconv.ParseUint(fs[9], 10, 64)
		if err != nil {
			return nil, "", false, fmt.Errorf("inode %q", fs[9])
		}
		if i == ino {
			return fs, sc.Text(), true, nil
		}
	}
	return nil, "", false, sc.Err()
}
