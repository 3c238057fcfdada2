package images

import "google.golang.org/protobuf/reflect/protoreflect"

func protoValueU32(v uint32) protoreflect.Value { return protoreflect.ValueOfUint32(v) }
