package recovery

import (
	"io/fs"
	"os"
	"path/filepath"
)

// WalkDisks calls fn for every disk of the source directory (the layout
// that Materialize writes too): every
// regular file in a top-level folder (a VM) and every top-level regular
// file (a VM of one disk).
func WalkDisks(source string, fn func(vm, disk, path string, size int64) error) error {
	entries, err := os.ReadDir(source)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := WalkVM(source, e.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}

// WalkVM calls fn for every disk of vm.
func WalkVM(source, vm string, fn func(vm, disk, path string, size int64) error) error {
	root := filepath.Join(source, vm)
	st, err := os.Lstat(root)
	if err != nil {
		return nil
	}
	if st.Mode().IsRegular() {
		return fn(vm, vm, root, st.Size())
	}
	if !st.IsDir() {
		return nil
	}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || d.Name() == MarkerName {
			// The marker a failover leaves beside the disks it made is
			// not a disk.
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		return fn(vm, filepath.ToSlash(rel), path, info.Size())
	})
}
