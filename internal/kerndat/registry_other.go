//go:build !linux

package kerndat

// godwit runs on Linux only; elsewhere the registry is empty.
var registry []Feature
