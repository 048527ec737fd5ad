package main

import (
	"fmt"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/units"
)

// activityFlags shape the change log's activity log (drfs mount and drfs
// agent).
type activityFlags struct {
	ActivityExtent  string `name:"activity-extent" default:"4MiB" placeholder:"SIZE" help:"Size of an extent of the activity log, a power of two (default ${default}): after a crash of the host only the hot extents are compared with the target."`
	ActivityExtents int    `name:"activity-extents" default:"1024" placeholder:"N" help:"How many extents may be hot at once (default ${default}): a crash of the host costs comparing at most this many extents."`
}

func (f activityFlags) options() (agent.Activity, error) {
	n, err := units.ParseSize(f.ActivityExtent)
	if err != nil {
		return agent.Activity{}, fmt.Errorf("--activity-extent: %w", err)
	}
	return agent.Activity{Extent: n, Extents: f.ActivityExtents}, nil
}
