// Package criuimg is the CRIU-image codec of the checkpoint model: Write
// turns a model.Tree into CRIU's images (core, ids, mm, pstree, fs, files,
// fdinfo, inventory — dumper/IMAGES.md says field by field how), and Read
// turns images, godwit's or CRIU's, back into a model.Tree, checking
// every cross-reference so that the restorer can trust what it gets.
//
// Ids are the model's: files.img ids are File ids, fdinfo-N.img is named
// by the tasks' Files id, and one core/mm/fs/ids image is written per
// task. Pages are not the codec's business: they are written and read as
// streams (pagemap-*.img + pages-*.img) beside it.
package criuimg
