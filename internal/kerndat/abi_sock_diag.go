package kerndat

// from include/uapi/linux/sock_diag.h, unix_diag.h, inet_diag.h,
// netlink_diag.h and packet_diag.h. Only the request layouts and the
// offsets of the inode field in the replies are needed by the probes.

const (
	sizeofUnixDiagReq    = 24 // struct unix_diag_req
	sizeofInetDiagReqV2  = 56 // struct inet_diag_req_v2 / inet_diag_req_raw
	sizeofNetlinkDiagReq = 20 // struct netlink_diag_req
	sizeofPacketDiagReq  = 20 // struct packet_diag_req

	unixDiagMsgInoOff    = 4  // struct unix_diag_msg.udiag_ino
	inetDiagMsgInoOff    = 68 // struct inet_diag_msg.idiag_inode
	netlinkDiagMsgInoOff = 16 // struct netlink_diag_msg.ndiag_ino
	packetDiagMsgInoOff  = 4  // struct packet_diag_msg.pdiag_ino

	ndiagProtoAll = 255 // NDIAG_PROTO_ALL
)
