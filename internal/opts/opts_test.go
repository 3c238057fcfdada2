package opts

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]uint64{"0": 0, "1": 1, "4096": 4096, "1K": 1 << 10, "2k": 2 << 10, "10M": 10 << 20, "3G": 3 << 30}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "K", "-1", "1T", "1.5M", "99999999999999999999G", "17179869184G"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseExternal(t *testing.T) {
	good := map[string]External{
		"mnt[/m]:name":        {"mnt", "/m", "name"},
		"mnt[]:ms":            {"mnt", "", "ms"},
		"mnt[]":               {"mnt", "", ""},
		"dev[8/1]:disk":       {"dev", "8/1", "disk"},
		"file[25:1234]":       {"file", "25:1234", ""},
		"tty[8800:1a]":        {"tty", "8800:1a", ""},
		"unix[1234]":          {"unix", "1234", ""},
		"veth[eth0]:vx@br0":   {"veth", "eth0", "vx@br0"},
		"macvlan[mv0]:eth0":   {"macvlan", "mv0", "eth0"},
		"mnt[name]:/host/dir": {"mnt", "name", "/host/dir"},
	}
	for in, want := range good {
		got, err := ParseExternal(in)
		if err != nil || got != want {
			t.Errorf("ParseExternal(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if err == nil && got.String() != in {
			t.Errorf("External(%q).String() = %q", in, got.String())
		}
	}
	for _, in := range []string{"", "mnt", "[x]", "disk[1]", "file[1]", "tty[x:y]", "tty[0x8800:12]", "mnt[x]", "dev[8/1]", "veth[a]", "unix[1]junk", "mnt]["} {
		if got, err := ParseExternal(in); err == nil {
			t.Errorf("ParseExternal(%q) = %+v, want an error", in, got)
		}
	}
}

func TestParseInheritFD(t *testing.T) {
	good := map[string]InheritFD{
		"fd[3]:tty[8800:12]":  {3, "tty[8800:12]"},
		"fd[0]:pipe[1]":       {0, "pipe[1]"},
		"fd[10]:socket[99]":   {10, "socket[99]"},
		"fd[4]:file[25:1234]": {4, "file[25:1234]"},
		"fd[5]:var/log/x":     {5, "var/log/x"},
	}
	for in, want := range good {
		got, err := ParseInheritFD(in)
		if err != nil || got != want {
			t.Errorf("ParseInheritFD(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "3:pipe[1]", "fd[]:x", "fd[-1]:x", "fd[3]", "fd[3]:", "fd[3]:pipe[x]", "fd[3]:pipe[1", "fd[3]:tty[1]", "fd[3]:tty[g:1]"} {
		if got, err := ParseInheritFD(in); err == nil {
			t.Errorf("ParseInheritFD(%q) = %+v, want an error", in, got)
		}
	}
}

func TestCgroupModes(t *testing.T) {
	for _, m := range []string{"none", "props", "soft", "full", "strict"} {
		if got, err := ParseManageCgroups(m); err != nil || got != m {
			t.Errorf("ParseManageCgroups(%q) = %q, %v", m, got, err)
		}
	}
	if got, _ := ParseManageCgroups(""); got != "soft" {
		t.Errorf("default --manage-cgroups = %q, want soft", got)
	}
	if _, err := ParseManageCgroups("hard"); err == nil {
		t.Error("--manage-cgroups=hard accepted")
	}
}

func TestValidate(t *testing.T) {
	o := New()
	o.Verbosity = 9
	if err := o.Validate("check"); err != nil || o.Verbosity != LogDebug {
		t.Errorf("verbosity 9: %v, level %d; want clamped to 4", err, o.Verbosity)
	}
	o = New()
	o.Tree, o.LeaveRunning, o.LeaveStopped = 1, true, true
	if o.Validate("dump") == nil {
		t.Error("-R with -s accepted")
	}
	o = New()
	o.Tree, o.PageServer = 1, true
	if o.Validate("dump") == nil {
		t.Error("--page-server without --address accepted")
	}
	o = New()
	if o.Validate("pre-dump") == nil {
		t.Error("pre-dump without -t accepted")
	}
	o = New()
	o.Port = 70000
	if o.Validate("page-server") == nil {
		t.Error("port 70000 accepted")
	}
	o = New()
	o.TLSAllowedClients = []string{"src"}
	if o.Validate("page-server") == nil {
		t.Error("--tls-allowed-client without TLS accepted")
	}
	o.TLS = true
	if err := o.Validate("page-server"); err != nil {
		t.Errorf("--tls with CRIU's default certificate files: %v", err)
	}
}

func TestWorkPath(t *testing.T) {
	o := New()
	o.ImagesDir = "/img"
	if got := o.WorkPath("log"); got != "/img/log" {
		t.Errorf("WorkPath without -W = %q", got)
	}
	o.WorkDir = "/work"
	if got := o.WorkPath("log"); got != "/work/log" {
		t.Errorf("WorkPath with -W = %q", got)
	}
	if got := o.WorkPath("/abs/log"); got != "/abs/log" {
		t.Errorf("WorkPath(abs) = %q", got)
	}
}
